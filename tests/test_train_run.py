"""End-to-end smoke runs of the training CLI: the README's default job and the shapes demo with evaluation."""

import json
from pathlib import Path

import numpy as np
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
        "--config.train.profile_steps=(1,2)",
        f"--config.train.output_dir={tmp_path}",
        timeout=300,
        # The job as a user runs it, on this machine's one CPU device (the suite's conftest asks for 8).
        env={"XLA_FLAGS": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: 2 steps" in out.stdout
    assert list((tmp_path / "profile").rglob("*.xplane.pb")), (
        "train.profile_steps wrote no jax.profiler trace"
    )
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
    # Per-prompt scores of each evaluation, keyed by the steps trained before it, averaging to the logged means
    evaluations = [json.loads(line) for line in (tmp_path / "eval_scores.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evaluations] == [0, 1, 2]
    for name in ("train", "held_out"):
        scores = evaluations[-1][name]
        assert len(scores["scores"]["partial"]) == len(scores["tags"]) == 4
        assert np.mean(scores["scores"]["partial"]) == pytest.approx(history[-1][f"{name}/partial"])
        assert np.mean(scores["rewards"]["reward"]) == pytest.approx(history[-1][f"{name}/reward"])


def _brightness_values(tmp_path, folder, **reward):
    import runpy

    values = runpy.run_path(str(ROOT / "configs" / "brightness_cpu.py"))["get_config"]()
    values.train.num_steps = 2
    values.train.prompts_per_step = 2
    values.train.group_size = 4
    values.train.micro_batch_size = 8
    values.train.output_dir = str(tmp_path / folder)
    for key, value in reward.items():
        setattr(values.reward, key, value)
    return values


def _serving(reward):
    """The reference reward server in a thread on a free port (rewards/test_remote.served), up for the
    run's compilation too: at a load of 12 on 2 cores, compiling the first step took over a minute."""
    from reward_server import served

    from slas_jax.rewards.serve import make_app

    return served(make_app(reward, "brightness", concurrency=2), max_seconds=300.0)


def test_steps_through_the_reward_server_equal_the_in_process_reward_until_it_fails(tmp_path):
    """The smoke task trained through the reference server (the split step; brightness scored on the far
    side of HTTP from lossless npy images) computes the same two steps as the in-process brightness reward.
    The server then fails (500 on every try): the run ends at step 2 with the RewardError line naming the
    reward, the URL and the failure, and nothing of step 2 is logged."""
    from slas_jax.cli import one_line
    from slas_jax.config import load_config
    from slas_jax.errors import RewardError
    from slas_jax.metrics import read_metrics
    from slas_jax.rewards import Reward, build_reward
    from slas_jax.train import run

    in_process = run(load_config(_brightness_values(tmp_path, "jax")))
    brightness = build_reward("brightness", {})
    requests = []

    def host(images, _prompts, arrays):
        requests.append(len(images))
        if len(requests) > 6:  # 8 images a step in requests of 3: steps 0 and 1 take 3 requests each
            raise RuntimeError("detector out of memory")
        return np.asarray(brightness.fn(None, images, arrays)), ()

    with _serving(Reward(fn=None, host=host, reads=brightness.reads)) as url:
        options = {"url": url, "image_format": "npy", "batch_size": 3, "retries": 1, "backoff_s": 0.01}
        values = _brightness_values(tmp_path, "remote", name="remote", options=options)
        values.train.num_steps = 3
        with pytest.raises(RewardError) as caught:
            run(load_config(values))
    line = one_line(caught.value)
    assert line.startswith(f"step 2: reward 'remote' at {url} (serving 'brightness'): server error 500"), line
    assert "RuntimeError: detector out of memory after 2 attempts" in line
    remote = read_metrics(tmp_path / "remote" / "metrics.jsonl")
    assert [r["step"] for r in remote] == [0, 1]
    for ours, theirs in zip(remote, in_process, strict=True):
        for name, value in theirs.items():
            if name != "step_time_s":
                np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
        assert ours["host_reward_s"] > 0.0


def test_an_sd_run_on_a_diffusers_folder_writes_its_report(tmp_path):
    """A run of the tiny SD folder with a JAX reward and no scorer: the training prompts' fixed set is
    scored by the training reward before and after (and by a held-out reward), the run folder receives
    grids, curves, summary, TensorBoard events of every logged metric and the policy export with its
    diffusers folder."""
    from event_files import read_scalars
    from tiny_checkpoints import SD_WORDS, save_tiny_sd

    from slas_jax.config import load_config
    from slas_jax.metrics import read_metrics
    from slas_jax.train import run

    # One CrossAttn block (the train step's compilation dominates this test: ~20 s for it, ~30 s for two).
    save_tiny_sd(
        tmp_path / "sd",
        resolution=16,
        words=(*SD_WORDS, "bright", "top", "bottom", "left", "right", "centre"),
        unet={
            "down_block_types": ("CrossAttnDownBlock2D",),
            "up_block_types": ("CrossAttnUpBlock2D",),
            "block_out_channels": (8,),
        },
    )
    values = {
        "model": {"family": "unet", "checkpoint": str(tmp_path / "sd"), "resolution": 16},
        "sampler": {"name": "ddim", "num_steps": 2, "guidance_scale": 1.0},
        "train": {
            "num_steps": 2,
            "prompts_per_step": 2,
            "group_size": 2,
            "micro_batch_size": 4,
            "export_every": 2,
            "output_dir": str(tmp_path / "run"),
        },
        "reward": {"name": "brightness"},
        "data": {"name": "brightness"},
        "eval": {
            "every": 1,
            "num_prompts": 3,
            "samples_per_prompt": 1,
            "grid_prompts": 3,
            "rewards": {"again": {"name": "brightness"}},
        },
    }
    history = run(load_config(values))
    out = tmp_path / "run"
    for key in ("train/reward", "train/again", "train/gap/again"):
        assert all(np.isfinite(record[key]) for record in history), key
    for name in ("curves.png", "samples_before.png", "samples_after.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "| train/reward |" in summary and "| train/again |" in summary
    assert "`tensorboard/`" in summary and "`policy/`" in summary
    scalars = read_scalars(out / "tensorboard")
    for record in read_metrics(out / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step":
                assert scalars[key][record["step"]] == pytest.approx(value, rel=1e-6), key
    assert (
        out / "policy" / "step_2" / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors"
    ).is_file()
