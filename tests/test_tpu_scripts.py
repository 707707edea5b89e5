"""The Cloud TPU scripts print the gcloud commands they would run (--dry-run) and reject bad arguments."""

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), "--dry-run", *args], capture_output=True, text=True, timeout=30
    )


def test_create_names_the_accelerator():
    out = dry_run("create.sh", "--name", "pod", "--accelerator", "v5p-64", "--zone", "us-east5-a")
    assert out.returncode == 0
    assert "gcloud compute tpus tpu-vm create pod --zone us-east5-a --accelerator-type v5p-64" in out.stdout


def test_setup_installs_the_tpu_extra_on_every_worker():
    out = dry_run("setup.sh", "--name", "pod")
    assert out.returncode == 0
    assert "tpu-vm scp --recurse" in out.stdout and "--worker=all" in out.stdout
    assert "pip\\ install\\ -e\\ \\'.\\[tpu\\]\\'" in out.stdout


def test_launch_runs_training_on_all_workers_with_multihost():
    out = dry_run("launch.sh", "--name", "pod", "--", "--config", "configs/sd_tpu.py")
    assert out.returncode == 0
    assert "--worker=all" in out.stdout
    assert "python3\\ -m\\ slas_jax.train\\ --multihost\\ --config\\ configs/sd_tpu.py" in out.stdout


@pytest.mark.parametrize(("script", "args"), [("launch.sh", ()), ("create.sh", ("--bogus",))])
def test_bad_arguments_fail_with_one_line(script, args):
    out = dry_run(script, *args)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
