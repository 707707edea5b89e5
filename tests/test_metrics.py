"""Run outputs: the metrics log keeps exactly one record per step across fresh starts and resumes; one
writer fans every step out to JSON lines, TensorBoard event files and Weights & Biases."""

import math
import sys
from types import SimpleNamespace

import pytest
from event_files import read_events, read_scalars

from slas_jax.config import ConfigError, load_config
from slas_jax.metrics import WANDB_RUN_ID, JsonLines, TensorBoard, open_metrics, read_metrics


def test_a_fresh_run_starts_a_new_log_and_a_resumed_run_drops_the_steps_it_repeats(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = JsonLines(path)
    for step in range(5):
        writer.write(step, {"reward_mean": float(step)})
    # Preempted after step 4, last checkpoint at step 3: steps 3 and 4 run again.
    resumed = JsonLines(path, start_step=3)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    for step in (3, 4, 5):
        resumed.write(step, {"reward_mean": 10.0 + step})
    assert [(r["step"], r["reward_mean"]) for r in read_metrics(path)] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 13.0),
        (4, 14.0),
        (5, 15.0),
    ]
    JsonLines(path)
    assert read_metrics(path) == []


def test_nan_metrics_are_logged_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    JsonLines(path).write(0, {"policy_loss": float("nan")})
    assert read_metrics(path) == [{"step": 0, "policy_loss": None}]


def test_every_step_reaches_json_lines_and_tensorboard(tmp_path):
    writer = open_metrics(tmp_path, tensorboard=True)
    for step in range(3):
        writer.write(step, {"reward_mean": 0.5 + step, "train/reward": 0.25 * step, "policy_loss": math.nan})
    writer.close()
    assert [r["reward_mean"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0.5, 1.5, 2.5]
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["reward_mean"] == {0: 0.5, 1: 1.5, 2: 2.5}
    assert scalars["train/reward"] == {0: 0.0, 1: 0.25, 2: 0.5}
    assert all(math.isnan(v) for v in scalars["policy_loss"].values())  # a diverged run stays visible


def test_a_resumed_tensorboard_log_tells_tensorboard_to_drop_the_repeated_steps(tmp_path):
    TensorBoard(tmp_path).close()
    TensorBoard(tmp_path, start_step=3).close()
    purges = [e.step for e in read_events(tmp_path) if e.HasField("session_log")]
    assert purges == [3]  # TensorBoard discards the earlier events of steps >= 3 when it meets this START


class FakeWandb:
    """The part of wandb's API the backend uses: init(...) -> run with log(metrics, step=) and finish()."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return SimpleNamespace(
            log=lambda metrics, step: self.logged.append((step, metrics)),
            finish=lambda: setattr(self, "finished", self.finished + 1),
        )


def test_wandb_logs_every_step_and_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer = open_metrics(tmp_path, wandb_project="slas", config={"train": {"seed": 3}})
    writer.write(0, {"reward_mean": 0.5})
    writer.close()
    open_metrics(tmp_path, 1, wandb_project="slas").close()
    open_metrics(tmp_path, wandb_project="slas").close()
    first, resumed, fresh = fake.inits
    assert first["project"] == "slas" and first["config"] == {"train": {"seed": 3}}
    assert first["dir"] == str(tmp_path) and first["resume"] == "allow"
    assert resumed["id"] == first["id"] != fresh["id"]
    assert (tmp_path / WANDB_RUN_ID).read_text() == fresh["id"]
    assert fake.logged == [(0, {"reward_mean": 0.5})] and fake.finished == 3


def test_a_wandb_project_without_wandb_installed_is_one_line(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"config\.train\.wandb_project: needs wandb.*slas-jax\[wandb\]"):
        load_config({"train": {"wandb_project": "slas"}})
