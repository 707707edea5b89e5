"""End-to-end smoke runs of the training CLI: the README's default job and the shapes demo with evaluation."""

import json
from pathlib import Path

import pytest
from cli_runner import run_module

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_default_job_runs_and_logs_metrics(tmp_path):
    out = run_module(
        "slas_jax.train",
        "--config",
        ROOT / "configs" / "brightness_cpu.py",
        "--config.train.num_steps=2",
        "--config.train.prompts_per_step=2",
        "--config.train.micro_batch_size=8",
        "--config.train.checkpoint_every=1",
        f"--config.train.output_dir={tmp_path}",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: 2 steps" in out.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert records[0]["first_ratio_max_dev"] < 1e-5
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in records)
    assert (tmp_path / "checkpoints" / "2").is_dir()


def test_shapes_run_writes_the_run_folder(tmp_path):
    import runpy

    from slas_jax.config import load_config
    from slas_jax.train import run

    values = runpy.run_path(str(ROOT / "configs" / "shapes_cpu.py"))["get_config"]()
    values.model.init_checkpoint = None
    values.train.num_steps = 2
    values.train.prompts_per_step = 2
    values.train.group_size = 4
    values.train.micro_batch_size = 8
    values.train.output_dir = str(tmp_path)
    values.eval.every = 1
    values.eval.num_prompts = 4
    values.eval.samples_per_prompt = 1
    values.eval.grid_prompts = 2
    values.reward.name = "shapes"
    values.reward.options = {"kind": "partial"}
    for eval_set in values.eval.sets.values():
        eval_set.options["data_dir"] = str(tmp_path / "tfds")
    values.data.options.data_dir = str(tmp_path / "tfds")
    history = run(load_config(values))
    assert len(history) == 2
    for key in ("truth/strict", "truth/partial", "train/strict", "held_out/strict", "held_out/partial"):
        assert 0.0 <= history[-1][key] <= 1.0
    for name in ("metrics.jsonl", "curves.png", "samples_before.png", "samples_after.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = (tmp_path / "summary.md").read_text()
    assert "held_out/strict" in summary and "hacking gap" in summary
