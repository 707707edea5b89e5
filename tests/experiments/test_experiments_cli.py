"""``python -m slas_jax.experiments`` end to end on the smallest real grid (configs/experiments/
tiny_brightness.py: the brightness task, 2 methods x 2 seeds x 12 steps): killed mid-grid (the runner and
its running cell, SIGKILL), then a sitting that finishes. Finished cells are never redone, the half-done cell
resumes from its checkpoint, and the report holds the table. (``--max-minutes`` is tested in test_runner.py
on a stand-in train process, which costs no compilation.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import one_line_error, run_module

from slas_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "experiments" / "tiny_brightness.py"
CELLS = [f"method-{m}__seed-{s}" for m in ("dance_grpo", "slas") for s in (0, 1)]


pytestmark = pytest.mark.slow
# One CPU device in the cells (the suite's conftest asks for 8 virtual ones, which only slows a one-device run
# down): the grid's cells then compile what a user's run compiles.
ENV = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}


def command(out: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "slas_jax.experiments",
        "--config",
        str(CONFIG),
        f"--config.out={out}",
        *flags,
    ]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The committed train-state checkpoints of a run folder (Orbax names them by step)."""
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def files_of(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_a_killed_grid_resumes_and_writes_the_report(tmp_path):
    out = tmp_path / "grid"
    first, second = (out / name for name in CELLS[:2])
    runner = subprocess.Popen(
        command(out, "--noprogress"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    wait_for(lambda: (first / "done.json").is_file() and checkpoint_steps(second), runner, timeout=900)
    os.kill(int((second / "cell.pid").read_text()), signal.SIGKILL)
    runner.kill()
    runner.communicate()
    assert not (second / "done.json").exists()
    resume_from = checkpoint_steps(second)[-1]
    assert resume_from < 12
    finished = files_of(first)

    done = subprocess.run(
        command(out, "--noprogress", "--parallel=2"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done: 4 of 4 cells done (3 in this sitting" in done.stdout
    assert files_of(first) == finished  # never redone
    log = (second / "train.log").read_text()
    assert f"resumed from step {resume_from}" in log
    assert [r["step"] for r in read_metrics(second / "metrics.jsonl")] == list(range(12))
    report = (out / "report.md").read_text()
    assert "4 of 4 cells finished" in report
    for group in ("method-dance_grpo", "method-slas"):
        assert f"| {group} | 2 |" in report
    assert "| claim 1: trains faster | method-slas | method-dance_grpo | steps to target | 2 vs 2 |" in report
    assert "claim 3 (more robust to model scaling): not tested" in report
    assert (out / "curves.png").stat().st_size > 1000

    again = run_module("slas_jax.experiments", "--config", CONFIG, f"--config.out={out}", "--report-only")
    assert again.returncode == 0 and "report in" in again.stdout
    changed = run_module(
        "slas_jax.experiments", "--config", CONFIG, f"--config.out={out}", "--config.order=('seed','method')"
    )
    assert "changed since grid.json was written" in one_line_error(changed)
    assert files_of(first) == finished
