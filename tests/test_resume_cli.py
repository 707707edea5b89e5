"""Resuming through the training CLI, as a user (or a scheduler) does: a run killed with SIGKILL at a random
step and rerun with the same command ends bitwise equal to an uninterrupted run, with equal metrics, summary
and curves, even when its newest checkpoint is damaged; SIGTERM and SIGINT finish the step, save (also with
checkpointing off) and exit 75; a finished run's command is a no-op; a changed config is refused in one line.

The runs share one JAX compilation cache, and the uninterrupted run and the killed one start together (compiling
is mostly single-threaded), so that one compilation's time is spent."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_runner import ROOT, one_line_error, run_module
from test_checkpoint import flip_byte

from slas_jax.checkpoint import MANIFEST
from slas_jax.cli import EXIT_STOPPED
from slas_jax.metrics import read_metrics

pytestmark = pytest.mark.slow

CONFIG = ROOT / "tests" / "resume_brightness.py"
STEPS = 5
TIMING = ("step_time_s",)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One CPU device (as a user runs it) and a compilation cache shared by the module's runs."""
    return {
        "XLA_FLAGS": "",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def command(folder: Path, *overrides: str, variant: str = "") -> list[str]:
    config = f"{CONFIG}:{variant}" if variant else str(CONFIG)
    return ["--config", config, f"--config.train.output_dir={folder}", *overrides]


def train(folder: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    return run_module("slas_jax.train", *command(folder, *overrides), timeout=600, env=env)


def start(folder: Path, env: dict[str, str], *overrides: str, variant: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slas_jax.train", *command(folder, *overrides, variant=variant)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def wait_for_step(folder: Path, step: int, process: subprocess.Popen, timeout: float = 600) -> None:
    """Until metrics.jsonl holds ``step``."""
    path, deadline = folder / "metrics.jsonl", time.monotonic() + timeout
    while not (path.is_file() and any(r["step"] >= step for r in read_metrics(path))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no step {step} in {timeout} s"
        time.sleep(0.1)


def untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(path)]


def final_arrays(folder: Path) -> dict[str, np.ndarray]:
    return ocp.StandardCheckpointer().restore(folder / "checkpoints" / str(STEPS) / "state")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    """(the folder of an uninterrupted run, the folder of the same run killed with SIGKILL after a random
    step)."""
    straight, killed = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("killed")
    reference, victim = start(straight, env), start(killed, env)
    wait_for_step(killed, random.Random(7).randint(2, STEPS - 2), victim)
    victim.kill()
    victim.wait()
    stdout, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr[-3000:]
    assert f"done: {STEPS} steps" in stdout
    return straight, killed


@pytest.fixture(scope="module")
def uninterrupted(runs):
    return runs[0]


def test_a_run_killed_at_a_random_step_resumes_bitwise(runs, env):
    uninterrupted, killed = runs
    # The newest sealed checkpoint is damaged too: the resume must fall back on the one before it.
    newest = max(int(p.parent.name) for p in (killed / "checkpoints").glob(f"*/{MANIFEST}"))
    flip_byte(killed / "checkpoints" / str(newest))
    out = train(killed, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"warning: checkpoint {newest} is damaged: " in out.stderr and "Traceback" not in out.stderr
    assert f"done: {STEPS} steps" in out.stdout
    want, got = final_arrays(uninterrupted), final_arrays(killed)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("metrics.jsonl", "history.jsonl"):
        assert untimed(killed / name) == untimed(uninterrupted / name), name
    for name in (
        "before.json",
        "final.json",
        "eval_scores.jsonl",
        "samples_before.png",
        "samples_after.png",
        "curves.png",
    ):
        assert (killed / name).read_bytes() == (uninterrupted / name).read_bytes(), name

    def summary(folder):
        return re.sub(r"wall time \d+ s", "", (folder / "summary.md").read_text()).replace(str(folder), "")

    assert summary(killed) == summary(uninterrupted)


def test_rerunning_a_finished_run_changes_nothing(uninterrupted, env):
    before = snapshot(uninterrupted)
    out = train(uninterrupted, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines() == [
        f"finished: {uninterrupted} holds all {STEPS} steps (checkpoint {STEPS}); nothing to do (raise "
        "train.num_steps to train on)"
    ]
    assert snapshot(uninterrupted) == before


def test_a_changed_config_is_refused_in_one_line(uninterrupted, env):
    line = one_line_error(train(uninterrupted, env, "--config.train.group_size=4"))
    assert "train.group_size: 2 -> 4" in line and "train.resume_override=True" in line


def test_sigterm_and_sigint_finish_the_step_save_and_exit_75(tmp_path, env):
    # Far more steps than the signal needs: a step of this run can take less than the test's polling interval,
    # and a signal landing in the last step would end the run as a finished one (exit 0).
    steps = 50
    stopped_at = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        process = start(
            tmp_path,
            env,
            "--config.train.checkpoint_every=0",
            f"--config.train.num_steps={steps}",
            variant="no_eval",
        )
        wait_for_step(tmp_path, stopped_at[-1] if stopped_at else 0, process)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == EXIT_STOPPED, (stdout[-2000:], stderr[-2000:])
        assert "Traceback" not in stderr
        step = read_metrics(tmp_path / "metrics.jsonl")[-1]["step"] + 1
        assert stdout.strip().splitlines()[-1] == (
            f"stopped by {sig.name} after step {step} of {steps}; checkpoint {step} saved in "
            f"{tmp_path / 'checkpoints'}; rerun the same command to resume"
        )
        assert (tmp_path / "checkpoints" / str(step) / MANIFEST).is_file()
        stopped_at.append(step)
    assert f"resumed from step {stopped_at[0]}" in stdout
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(stopped_at[1]))
