"""The runner's bookkeeping without training: cells' plans, a metrics file read while it is written, the
grid lock. (tests/experiments/test_experiments_cli.py runs real cells, kills and resumes them.)"""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from slas_jax.errors import ConfigError, UserError
from slas_jax.experiments.grid import Cell
from slas_jax.experiments.runner import DONE, Plan, Runner, attempts, grid_lock, last_logged_step, plan_cells

CELL = Cell("method-a__seed-0", {"method": "a", "seed": "0"}, "configs/shapes_cpu.py", ("train.seed=0",))


def config(checkpoint_every=2, scorer="shapes", sets=("train",)):
    return SimpleNamespace(
        train=SimpleNamespace(checkpoint_every=checkpoint_every, num_steps=7),
        eval=SimpleNamespace(scorer=scorer, sets=dict.fromkeys(sets), num_prompts=16, samples_per_prompt=2),
    )


def test_a_cell_with_a_scorer_and_fixed_sets_gets_a_final_benchmark(tmp_path):
    seen = []
    plan = plan_cells([CELL], tmp_path, lambda argv: seen.append(argv) or config())[0]
    assert seen[0][-1] == f"--config.train.output_dir={tmp_path / CELL.name}"
    assert plan.num_steps == 7 and plan.run_dir == tmp_path / CELL.name
    (train, argv), (phase, evaluate) = plan.commands()
    assert (train, phase) == ("train", "final_eval")
    assert argv[1:3] == ["-m", "slas_jax.train"]
    assert evaluate[1:4] == ["-m", "slas_jax.evaluate", "--benchmark=shapes"]
    assert f"--run_dir={tmp_path / CELL.name}" in evaluate and "--num_prompts=16" in evaluate
    plain = plan_cells([CELL], tmp_path, lambda argv: config(scorer=None))[0]
    assert [name for name, _ in plain.commands()] == ["train"]


def test_cells_that_could_not_resume_or_do_not_parse_are_refused_naming_the_cell(tmp_path):
    with pytest.raises(ConfigError, match=r"grid cell method-a__seed-0: train.checkpoint_every is 0"):
        plan_cells([CELL], tmp_path, lambda argv: config(checkpoint_every=0))

    def bad(argv):
        raise ConfigError("config.advantage.method: unknown method 'ppo'")

    with pytest.raises(ConfigError, match=r"^grid cell method-a__seed-0: config.advantage.method: unknown"):
        plan_cells([CELL], tmp_path, bad)


def test_the_last_step_of_a_metrics_file_being_written(tmp_path):
    assert last_logged_step(tmp_path) == -1
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "reward_mean": 0.5}\n{"step": 2, "rew')
    assert last_logged_step(tmp_path) == 1


def test_one_runner_per_grid_folder(tmp_path: Path):
    with (
        grid_lock(tmp_path),
        pytest.raises(UserError, match="another runner is working on"),
        grid_lock(tmp_path),
    ):
        pass
    with grid_lock(tmp_path):  # released when its holder is done
        pass


def test_the_sections_of_a_cells_log(tmp_path):
    (tmp_path / "train.log").write_text(
        "\n=== 2026-01-01 10:00:00 train: -m slas_jax.train --config x\nGRPO 1/4\n"
        "\n=== 2026-01-01 10:05:00 train: -m slas_jax.train --config x\nresumed from step 2 in y\n"
        "\n=== 2026-01-01 10:09:00 final_eval: -m slas_jax.evaluate --benchmark=shapes\ndone: 512 images\n"
    )
    found = attempts(tmp_path)
    assert [phase for phase, _ in found] == ["train", "train", "final_eval"]
    assert "resumed from step 2" in found[1][1] and "resumed" not in found[0][1]


FAKE_TRAIN = """
import json, signal, sys, time
from pathlib import Path
run_dir, steps, seconds, code = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
(run_dir / "started").write_text(str(time.time()))
if code:
    print("error: boom")
    sys.exit(code)
metrics = run_dir / "metrics.jsonl"
start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
for step in range(start, steps):
    time.sleep(seconds)
    with metrics.open("a") as f:
        f.write(json.dumps({"step": step}) + "\\n")
    if stop:
        (run_dir / "terminated").write_text("")
        break
else:
    (run_dir / "checkpoints" / str(steps)).mkdir(parents=True)
(run_dir / "ended").write_text(str(time.time()))
"""


class FakePlan(Plan):
    """A cell whose train phase is a stand-in for the train CLI: ``seconds`` per step, on SIGTERM the train
    loop's behaviour (finish the step, stop, exit 0); ``code`` != 0: fails at start with one line."""

    def __init__(self, out: Path, name: str, steps: int, seconds: float, code: int = 0):
        cell = Cell(name, {"seed": name}, "x", ())
        super().__init__(cell, out / name, None, steps, ())
        object.__setattr__(self, "args", (str(seconds), str(code)))

    def commands(self):
        return [
            ("train", [sys.executable, "-c", FAKE_TRAIN, str(self.run_dir), str(self.num_steps), *self.args])
        ]


def test_cells_run_side_by_side_and_a_failed_one_does_not_stop_the_grid(tmp_path):
    plans = [
        FakePlan(tmp_path, "a", 3, 0.3),
        FakePlan(tmp_path, "b", 3, 0.3),
        FakePlan(tmp_path, "c", 1, 0.0, 3),
    ]
    outcome = Runner(plans, parallel=2).run(progress=False)
    assert (outcome.done, outcome.finished_now, outcome.stopped) == (2, 2, None)
    assert list(outcome.failed) == ["c"] and outcome.failed["c"] == "train exit 3: error: boom"
    started = [float((tmp_path / n / "started").read_text()) for n in "ab"]
    ended = [float((tmp_path / n / "ended").read_text()) for n in "ab"]
    assert max(started) < min(ended)  # a and b overlapped
    assert json.loads((tmp_path / "a" / DONE).read_text())["steps"] == 3
    again = Runner(plans, parallel=2).run(progress=False)  # only the failed cell runs again
    assert (again.finished_now, list(again.failed)) == (0, ["c"])
    assert float((tmp_path / "a" / "started").read_text()) == started[0]


def test_the_budget_stops_the_running_cell_cleanly_and_starts_no_other(tmp_path):
    plans = [FakePlan(tmp_path, "a", 50, 0.1), FakePlan(tmp_path, "b", 2, 0.1)]
    outcome = Runner(plans, max_minutes=0.01).run(progress=False)
    assert outcome.stopped == "stopped at the 0.01-minute budget"
    assert (outcome.done, outcome.half) == (0, 1)
    assert (tmp_path / "a" / "terminated").is_file() and not (tmp_path / "a" / DONE).exists()
    assert not (tmp_path / "b").exists()
    assert outcome.seconds < 10
    finished = Runner(plans).run(progress=False)  # the next sitting continues where the first stopped
    assert (finished.done, finished.stopped) == (2, None)
    assert last_logged_step(tmp_path / "a") == 49


def test_after_the_start_window_the_running_cell_finishes_and_no_other_starts(tmp_path):
    plans = [FakePlan(tmp_path, "a", 10, 0.1), FakePlan(tmp_path, "b", 2, 0.1)]
    outcome = Runner(plans, start_within=0.005).run(progress=False)
    assert outcome.stopped == "started no cell after 0.005 minutes"
    assert (outcome.done, outcome.half) == (1, 0)
    assert not (tmp_path / "a" / "terminated").exists() and last_logged_step(tmp_path / "a") == 9
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="--start-within must be >= 0, got -1"):
        Runner(plans, start_within=-1)
    finished = Runner(plans, start_within=10).run(progress=False)
    assert (finished.done, finished.stopped) == (2, None)


def test_a_cell_does_not_outlive_a_killed_runner(tmp_path):
    """SIGKILL of the runner (no chance to forward anything): its cell gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG), finishes its step and stops, so no orphan keeps writing into the folder."""
    script = (
        "import runpy, sys; from pathlib import Path; from slas_jax.experiments.runner import Runner; "
        f"fake = runpy.run_path({str(Path(__file__))!r})['FakePlan']; "
        f"Runner([fake(Path({str(tmp_path)!r}), 'a', 1000, 0.05)]).run(progress=False)"
    )
    runner = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while last_logged_step(tmp_path / "a") < 2:
        assert runner.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    runner.kill()
    runner.wait()
    while not (tmp_path / "a" / "ended").is_file():
        assert time.monotonic() < deadline, "the cell outlived its runner"
        time.sleep(0.05)
    assert (tmp_path / "a" / "terminated").is_file()
    assert last_logged_step(tmp_path / "a") < 999
