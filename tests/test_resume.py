"""What a rerun finds in a run folder (slas_jax.resume), without a model: a changed config refused in one line
naming the fields (or accepted through train.resume_override), a finished run left alone, an earlier run's
outputs never overwritten, damaged checkpoints skipped, a torn metrics line dropped."""

import dataclasses
import json
import runpy
from pathlib import Path

import pytest
from test_checkpoint import flip_byte, tiny_state

from slas_jax.checkpoint import Checkpointer, CheckpointError
from slas_jax.config import ConfigError, load_config
from slas_jax.errors import UserError
from slas_jax.metrics import JsonLines, read_metrics
from slas_jax.resume import FINGERPRINT, check_fingerprint, fingerprint, plan_resume

ROOT = Path(__file__).resolve().parents[1]


def config(output_dir="runs/x", **changes):
    """configs/brightness_cpu.py with ``changes`` ({"section.field": value})."""
    values = runpy.run_path(str(ROOT / "configs" / "brightness_cpu.py"))["get_config"]()
    values.train.output_dir = str(output_dir)
    for name, value in changes.items():
        section, key = name.split(".", 1)
        values[section][key] = value
    return load_config(values)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model.architecture": {"block_out_channels": (32, 64)}}, "model.architecture.block_out_channels"),
        ({"loss.kl_beta": 0.1}, "loss.kl_beta: 0.0 -> 0.1"),
        ({"train.group_size": 4}, "train.group_size: 8 -> 4"),
        ({"advantage.method": "dance_grpo"}, 'advantage.method: "slas" -> "dance_grpo"'),
        ({"sampler.num_steps": 8}, "sampler.num_steps: 6 -> 8"),
    ],
)
def test_a_resume_with_a_changed_config_is_refused_naming_the_fields(change, named):
    if "model.architecture" in change:  # a mapping replaced whole: keep the other keys of the file's
        change = {"model.architecture": {**config().model.architecture, **change["model.architecture"]}}
    saved_with = {FINGERPRINT: fingerprint(config())}
    with pytest.raises(ConfigError) as refused:
        check_fingerprint(saved_with, config(**change), "checkpoint 3 in runs/x/checkpoints")
    line = str(refused.value)
    assert "\n" not in line and named in line and "train.resume_override=True" in line
    accepted = config(**change, **{"train.resume_override": True})
    assert any(named in c for c in check_fingerprint(saved_with, accepted, "checkpoint 3"))


def test_length_cadence_outputs_and_layout_may_change():
    changed = config(
        "elsewhere",
        **{
            "train.num_steps": 99,
            "train.log_every": 5,
            "train.checkpoint_every": 3,
            "train.tensorboard": False,
            "train.keep_checkpoints": 4,
            "mesh.data": 2,
            "model.remat": True,
            "eval.every": 3,
        },
    )
    assert check_fingerprint({FINGERPRINT: fingerprint(config())}, changed, "checkpoint 3") == []


def test_a_checkpoint_without_a_fingerprint_needs_the_override():
    with pytest.raises(ConfigError, match="records no config"):
        check_fingerprint({"step": 3}, config(), "checkpoint 3")


def save_run(folder, steps, run_config):
    checkpointer = Checkpointer(folder / "checkpoints")
    for step in steps:
        checkpointer.save(tiny_state(step), {"step": step, FINGERPRINT: fingerprint(run_config)})
    checkpointer.wait()
    return checkpointer


def test_an_accepted_override_is_logged_with_the_checkpoints(tmp_path):
    checkpointer = save_run(tmp_path, (1,), config(tmp_path))
    changed = config(tmp_path, **{"advantage.method": "dance_grpo", "train.resume_override": True})
    resume = plan_resume(changed, checkpointer, tmp_path)
    assert resume.step == 1 and resume.changed == ['advantage.method: "slas" -> "dance_grpo"']
    assert resume.warnings == [
        f"resuming checkpoint 1 in {tmp_path / 'checkpoints'} despite changed config (train.resume_override): "
        'advantage.method: "slas" -> "dance_grpo"'
    ]
    assert resume.overrides == [{"step": 1, "changes": resume.changed}]


def test_a_remote_output_dir_is_refused_until_run_outputs_can_go_there():
    with pytest.raises(ConfigError, match=r"config.train.output_dir: gs://bucket/run is a remote folder"):
        config("gs://bucket/run")


def test_a_finished_run_is_left_alone(tmp_path):
    run_config = config(tmp_path, **{"train.num_steps": 2})
    checkpointer = save_run(tmp_path, (1, 2), run_config)
    resume = plan_resume(run_config, checkpointer, tmp_path)
    assert resume.finished and resume.line.startswith(
        f"finished: {tmp_path} holds all 2 steps (checkpoint 2)"
    )
    assert (
        plan_resume(
            dataclasses.replace(run_config, train=dataclasses.replace(run_config.train, num_steps=3)),
            checkpointer,
            tmp_path,
        ).step
        == 2
    )


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_with_a_warning(tmp_path):
    run_config = config(tmp_path, **{"train.num_steps": 5})
    checkpointer = save_run(tmp_path, (1, 2), run_config)
    flip_byte(tmp_path / "checkpoints" / "2")
    resume = plan_resume(run_config, checkpointer, tmp_path)
    assert resume.step == 1 and not resume.finished
    assert resume.warnings[0].startswith("checkpoint 2 is damaged: ") and "sha256" in resume.warnings[0]
    assert "moved the damaged checkpoints to" in resume.warnings[1]
    assert (tmp_path / "damaged_checkpoints" / "2").is_dir() and checkpointer.steps() == [1]


def test_only_damaged_checkpoints_stop_in_one_line(tmp_path):
    run_config = config(tmp_path)
    checkpointer = save_run(tmp_path, (1,), run_config)
    flip_byte(tmp_path / "checkpoints" / "1")
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint in .*: checkpoint 1 is damaged: .*sha256"
    ):
        plan_resume(run_config, checkpointer, tmp_path)


def test_an_earlier_run_without_checkpoints_is_not_overwritten(tmp_path):
    run_config = config(tmp_path, **{"train.num_steps": 3})
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert plan_resume(run_config, checkpointer, tmp_path).step == 0  # an empty folder: a fresh run
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "reward_mean": 0.5}) + "\n")
    with pytest.raises(ConfigError, match=r"holds an earlier run \(metrics.jsonl\) but no checkpoint"):
        plan_resume(run_config, checkpointer, tmp_path)
    history = "".join(json.dumps({"step": s, "reward_mean": 0.5}) + "\n" for s in range(3))
    (tmp_path / "history.jsonl").write_text(history)
    resume = plan_resume(run_config, checkpointer, tmp_path)
    assert resume.finished and "no checkpoint" in resume.line


def test_a_torn_last_metrics_line_is_dropped_and_the_file_repaired(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "r": 1.0}\n{"step": 1, "r": 2.0}\n{"step": 2, "r": 3.')
    assert read_metrics(path) == [{"step": 0, "r": 1.0}, {"step": 1, "r": 2.0}]
    JsonLines(path, start_step=2)
    assert path.read_text() == '{"step": 0, "r": 1.0}\n{"step": 1, "r": 2.0}\n'
    assert capsys.readouterr().err.startswith(f"warning: dropped the unfinished last line of {path}")
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not a JSON record"):
        JsonLines(path, start_step=2)
