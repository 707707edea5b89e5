"""The Cloud TPU scripts (tpu_scripts/): the gcloud commands each would run (--dry-run; a stand-in gcloud on
PATH records any that is run), one line and exit code 2 for a bad command line, the shell code they run on
the workers (run here, on a stand-in worker), and the preflight that refuses, before any gcloud command, a
config that the slice cannot hold."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
SHELL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")

_spec = importlib.util.spec_from_file_location("tpu_preflight", SCRIPTS / "preflight.py")
preflight = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = preflight  # its dataclasses look their module up there
_spec.loader.exec_module(preflight)


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o755)
    return path


class Bench:
    """The scripts' surroundings: a gcloud that records its calls (and answers `describe --format` with
    $FAKE_ACCELERATOR), and a memory planner that records its arguments and exits $FAKE_PLAN_RC."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        self.gcloud_calls = tmp / "gcloud_calls"
        self.plan_args = tmp / "plan_args.json"
        _write(
            bin_dir / "gcloud",
            f"""
            #!/usr/bin/env bash
            printf '%s\\n' "$*" >> {shlex.quote(str(self.gcloud_calls))}
            if [[ "$*" == *describe*--format* && -n "${{FAKE_ACCELERATOR:-}}" ]]; then echo "$FAKE_ACCELERATOR"; exit 0; fi
            exit 97
            """,
        )
        planner = _write(
            tmp / "planner.py",
            f"""
            import json, os, sys
            json.dump(sys.argv[1:], open({str(self.plan_args)!r}, "w"))
            if os.environ.get("FAKE_PLAN_LINE"):
                print(os.environ["FAKE_PLAN_LINE"], file=sys.stderr)
            sys.exit(int(os.environ.get("FAKE_PLAN_RC", "0")))
            """,
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
        self.env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            PYTHON=sys.executable,
            PYTHONPATH=str(ROOT),
            SLAS_JAX_PLANNER=f"{shlex.quote(sys.executable)} {shlex.quote(str(planner))}",
        )

    def script(self, name: str, *args: str, dry_run: bool = True, **env: str) -> subprocess.CompletedProcess:
        argv = ["bash", str(SCRIPTS / name), *(["--dry-run"] if dry_run else []), *args]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
        )

    def gcloud_runs(self) -> list[str]:
        return self.gcloud_calls.read_text().splitlines() if self.gcloud_calls.exists() else []


@pytest.fixture
def bench(tmp_path) -> Bench:
    return Bench(tmp_path)


def printed(out: subprocess.CompletedProcess) -> list[list[str]]:
    """The commands a script printed (`+ cmd`, shell-quoted), as argument lists."""
    return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def gcloud(out: subprocess.CompletedProcess) -> list[list[str]]:
    return [cmd for cmd in printed(out) if cmd[0] == "gcloud"]


def remote(cmd: list[str]) -> str:
    """The --command of a `gcloud compute tpus tpu-vm ssh --worker=all` line."""
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in cmd
    return cmd[cmd.index("--command") + 1]


def words(text: str) -> list[str]:
    return text.split()


def one_line_error(out: subprocess.CompletedProcess) -> bool:
    return out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1


# --- the gcloud commands -------------------------------------------------------------------------------------


def test_create_names_the_accelerator_and_its_software_version(bench):
    out = bench.script("create.sh", "--name", "pod", "--accelerator", "v5p-64", "--zone", "us-east5-a")
    assert out.returncode == 0
    assert gcloud(out) == [
        words(
            "gcloud compute tpus tpu-vm create pod --zone us-east5-a --accelerator-type v5p-64 "
            "--version v2-alpha-tpuv5"
        )
    ]
    out = bench.script("create.sh", "--accelerator=v6e-16", "--version=my-image")
    assert gcloud(out)[0][-2:] == ["--version", "my-image"]
    assert bench.gcloud_runs() == []


def test_setup_installs_the_tpu_extra_on_every_worker(bench):
    out = bench.script("setup.sh", "--name", "pod")
    assert out.returncode == 0
    scp, ssh = gcloud(out)
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"] and "--worker=all" in scp
    assert "pip install -e '.[tpu]'" in remote(ssh)


def test_launch_runs_training_on_all_workers_with_multihost_and_logs_the_run(bench):
    out = bench.script(
        "launch.sh", "--name", "pod", "--run", "r1", "--skip-preflight", "--", "--config", "configs/sd_tpu.py"
    )
    assert out.returncode == 0 and len(printed(out)) == 1
    command = remote(gcloud(out)[0])
    assert "nohup python3 -m slas_jax.train --multihost --config configs/sd_tpu.py" in command
    assert '>> "$d/$new.log"' in command and "d=~/slas_jax_logs" in command and "new=r1" in command


def test_status_reports_state_health_and_the_trainer_of_every_worker(bench):
    out = bench.script("status.sh", "--name", "pod", "--zone", "z")
    assert out.returncode == 0
    describe, ssh = gcloud(out)
    assert describe[:8] == words("gcloud compute tpus tpu-vm describe pod --zone z")
    assert "state" in describe[-1] and "health" in describe[-1]
    assert "if alive; then" in remote(ssh)
    (listing,) = gcloud(bench.script("status.sh", "--list", "--zone", "z"))
    assert listing[:7] == words("gcloud compute tpus tpu-vm list --zone z") and "health" in listing[-1]


def test_logs_tails_every_worker_with_its_index(bench):
    command = remote(gcloud(bench.script("logs.sh", "--name", "pod", "--run", "r1", "--lines", "5"))[0])
    assert "RUN=r1" in command and "tail -n 5" in command and "s/^/worker $w: /" in command
    assert "tail -n 7 -F" in remote(gcloud(bench.script("logs.sh", "--lines=7", "--follow"))[0])


def test_stop_sends_sigterm_and_stops_the_vm_only_after_the_trainers_exit(bench):
    (ssh,) = gcloud(bench.script("stop.sh", "--name", "pod"))
    assert 'kill -TERM "$pid"' in remote(ssh) and "while alive" not in remote(ssh)
    ssh, stop = gcloud(bench.script("stop.sh", "--name", "pod", "--vm", "--timeout", "60"))
    assert "while alive" in remote(ssh) and "-lt 60" in remote(ssh)
    assert stop == words("gcloud compute tpus tpu-vm stop pod --zone us-central2-b")


def test_delete_asks_for_yes(bench):
    out = bench.script("delete.sh", "--name", "pod")
    assert one_line_error(out) and "--yes" in out.stderr and printed(out) == []
    out = bench.script("delete.sh", "--name", "pod", "--yes", "--project", "p")
    assert gcloud(out) == [
        words("gcloud compute tpus tpu-vm delete pod --zone us-central2-b --project p --quiet")
    ]


def test_queued_resources_create_list_describe_delete(bench):
    base = ["--name", "pod", "--zone", "z", "--accelerator", "v5litepod-16"]
    (create,) = gcloud(bench.script("queued.sh", "create", "--spot", *base))
    assert create == (
        words(
            "gcloud compute tpus queued-resources create pod-qr --zone z --node-id pod --accelerator-type "
            "v5litepod-16 --runtime-version v2-alpha-tpuv5-lite --spot"
        )
    )
    (create,) = gcloud(
        bench.script("queued.sh", "create", "--reserved", "--qr", "q", "--valid-until-duration=6h")
    )
    assert create[5] == "q" and create[-3:] == ["--reserved", "--valid-until-duration", "6h"]
    assert gcloud(bench.script("queued.sh", "list", *base)) == [
        words("gcloud compute tpus queued-resources list --zone z")
    ]
    assert gcloud(bench.script("queued.sh", "describe", *base)) == [
        words("gcloud compute tpus queued-resources describe pod-qr --zone z")
    ]
    assert gcloud(bench.script("queued.sh", "delete", "--yes", *base)) == [
        words("gcloud compute tpus queued-resources delete pod-qr --zone z --force --quiet")
    ]
    assert one_line_error(bench.script("queued.sh", "delete", *base))
    assert bench.gcloud_runs() == []


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("launch.sh", ()),
        ("create.sh", ("--bogus",)),
        ("create.sh", ("--name",)),
        ("logs.sh", ("--lines", "many")),
        ("logs.sh", ("--run", "a b")),
        ("stop.sh", ("--timeout", "-1")),
        ("status.sh", ("--", "extra")),
        ("queued.sh", ()),
        ("queued.sh", ("create", "--spot", "--reserved")),
        ("queued.sh", ("list", "--spot")),
        ("queued.sh", ("list", "delete")),
        ("preflight.sh", ()),
    ],
)
def test_bad_arguments_fail_with_one_line(bench, script, args):
    out = bench.script(script, *args)
    assert one_line_error(out), out.stderr
    assert gcloud(out) == [] and bench.gcloud_runs() == []


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_every_script_has_help(bench, script):
    out = bench.script(script, "--help", dry_run=False)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {script} ") and "--dry-run" in out.stdout


# --- the shell code on the workers ----------------------------------------------------------------------------


def test_the_worker_side_launch_status_logs_and_stop(bench, tmp_path):
    """The --command strings, run by bash on a stand-in worker: HOME with the checkout, curl answering the
    worker index, and a python3 that plays the trainer (prints, then saves and exits on SIGTERM)."""
    home = tmp_path / "home"
    (home / "slas-jax").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    _write(bin_dir / "curl", "#!/usr/bin/env bash\necho 3\n")
    _write(
        bin_dir / "python3",
        """
        #!/usr/bin/env bash
        trap 'echo "saved checkpoint"; exit 0' TERM
        echo "trainer $*"
        printf 'GRPO: 1/3\\rGRPO: 2/3\\n'
        while true; do sleep 0.1; done
        """,
    )
    env = {"HOME": str(home), "PATH": bench.env["PATH"]}

    def on_worker(script: str, *args: str) -> subprocess.CompletedProcess:
        (ssh,) = [cmd for cmd in gcloud(bench.script(script, *args)) if cmd[4] == "ssh"]
        return subprocess.run(
            ["bash", "-c", remote(ssh)], capture_output=True, text=True, env=env, timeout=30
        )

    launch = ("--run", "r1", "--skip-preflight", "--", "--config", "configs/x.py")
    logs = home / "slas_jax_logs"
    try:
        started = on_worker("launch.sh", *launch)
        assert started.returncode == 0 and started.stdout.startswith("worker 3: started run r1 (pid ")
        assert (logs / "latest").read_text() == "r1\n"
        status = on_worker("status.sh").stdout
        assert status.startswith("worker 3: training, run r1 (pid ") and status.endswith(": GRPO: 2/3\n")
        again = on_worker("launch.sh", *launch)
        assert again.returncode == 1 and "still training" in again.stdout
        assert on_worker("logs.sh", "--lines", "2").stdout == "worker 3: GRPO: 1/3\nworker 3: GRPO: 2/3\n"
        stopped = on_worker("stop.sh", "--wait", "--timeout", "20").stdout.splitlines()
        assert (
            stopped[0].startswith("worker 3: sent SIGTERM to run r1")
            and stopped[1] == "worker 3: stopped (run r1)"
        )
        assert on_worker("status.sh").stdout == "worker 3: not training; run r1 ended: saved checkpoint\n"
        assert (
            (logs / "r1.log")
            .read_text()
            .startswith("trainer -m slas_jax.train --multihost --config configs/x.py")
        )
        assert on_worker("stop.sh").stdout == "worker 3: not training (run r1)\n"
    finally:
        pid_file = logs / "r1.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


# --- the preflight ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accelerator", "devices", "hbm"),
    [("v4-8", 4, 32), ("v4-32", 16, 32), ("v5p-64", 32, 95), ("v5litepod-16", 16, 16), ("v6e-8", 8, 32)],
)
def test_the_accelerator_type_gives_chips_and_hbm(accelerator, devices, hbm):
    assert preflight.parse_accelerator(accelerator) == preflight.Slice(accelerator, devices, hbm)


@pytest.mark.parametrize("accelerator", ["v4-7", "v9-8", "v4", "tpu"])
def test_an_unknown_accelerator_type_is_refused(accelerator):
    with pytest.raises(preflight.PreflightError):
        preflight.parse_accelerator(accelerator)


@pytest.mark.parametrize(
    ("accelerator", "args", "refusal"),
    [
        (
            "v4-16",
            ["--config", "configs/flux_tpu.py", "--config.mesh.fsdp=16"],
            "fsdp 16 x tensor 1 does not divide",
        ),
        ("v4-32", ["--config", "configs/sd_tpu.py", "--config.mesh.data=4"], "= 4 does not use them all"),
        (
            "v4-32",
            ["--config", "configs/sd_tpu.py", "--config.train.micro_batch_size=8"],
            "micro-batches of 8",
        ),
        ("v5p-64", ["--config", "configs/flux_tpu.py", "--config.mesh.fsdp=16"], "16 prompts per rollout"),
    ],
)
def test_a_mesh_or_batch_that_does_not_split_over_the_slice_is_refused(
    accelerator, args, refusal, monkeypatch
):
    monkeypatch.chdir(ROOT)
    config = preflight.load_train_config(args)
    with pytest.raises(preflight.PreflightError, match=refusal):
        preflight.check_slice(config, preflight.parse_accelerator(accelerator))


def test_the_recipes_split_over_their_slices(monkeypatch):
    monkeypatch.chdir(ROOT)
    sd = preflight.load_train_config(["--config", "configs/sd_tpu.py"])
    assert "2 samples per device" in preflight.check_slice(sd, preflight.parse_accelerator("v4-32"))
    flux = preflight.load_train_config(["--config", "configs/flux_tpu.py", "--config.mesh.fsdp=16"])
    assert "1 samples per device" in preflight.check_slice(flux, preflight.parse_accelerator("v4-32"))


def test_the_planner_gets_the_config_and_its_overrides_only(monkeypatch):
    args = [
        "--config",
        "c.py",
        "--verbose",
        "--config.train.seed=3",
        "--config.train.num_steps",
        "5",
        "--multihost",
    ]
    assert preflight.config_args(args) == [
        "--config",
        "c.py",
        "--config.train.seed=3",
        "--config.train.num_steps",
        "5",
    ]
    monkeypatch.delenv(preflight.PLANNER_ENV, raising=False)
    assert preflight.planner_command() == [sys.executable, "-m", "slas_jax.plan"]
    monkeypatch.setenv(preflight.PLANNER_ENV, "my-planner --fast")
    assert preflight.planner_command() == ["my-planner", "--fast"]


def test_launch_runs_the_preflight_first(bench):
    out = bench.script(
        "launch.sh",
        "--accelerator",
        "v4-32",
        "--",
        "--config",
        "configs/sd_tpu.py",
        "--config.train.num_steps=3",
    )
    assert out.returncode == 0, out.stderr
    steps = [cmd[1] if cmd[0] != "gcloud" else "gcloud" for cmd in printed(out)]
    assert steps == ["tpu_scripts/preflight.py", str(bench.tmp / "planner.py"), "gcloud"]
    assert json.loads(bench.plan_args.read_text()) == [
        "--config", "configs/sd_tpu.py", "--config.train.num_steps=3", "--devices", "16", "--hbm_gib", "32",
    ]  # fmt: skip
    assert bench.gcloud_runs() == []


def test_an_indivisible_batch_is_refused_before_the_planner(bench, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(preflight.PLANNER_ENV, bench.env[preflight.PLANNER_ENV])
    args = ["--config", "configs/sd_tpu.py", "--config.train.micro_batch_size=8"]
    assert preflight.main(["--accelerator", "v4-32", "--", *args]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: v4-32 has 16 devices") and "micro-batches of 8" in err and err.count("\n") == 1
    )
    assert not bench.plan_args.exists()


def test_a_slice_too_small_for_the_plan_is_refused_before_any_gcloud_command(bench):
    line = "error: per-device total 41.3 GiB does not fit 16 GiB: optimizer state 24.1 GiB"
    out = bench.script(
        "launch.sh", "--accelerator", "v5litepod-16", "--", "--config", "configs/sd_tpu.py",
        FAKE_PLAN_RC="2", FAKE_PLAN_LINE=line,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr == line + "\n"
    assert json.loads(bench.plan_args.read_text())[-4:] == ["--devices", "16", "--hbm_gib", "16"]
    assert gcloud(out) == [] and bench.gcloud_runs() == []


def test_without_accelerator_launch_checks_the_slice_that_exists(bench):
    """Launch asks gcloud for the TPU VM's type and gives it to the preflight (here a python that refuses)."""
    _write(bench.tmp / "bin" / "refusing-python", '#!/usr/bin/env bash\necho "error: $*" >&2\nexit 2\n')
    out = bench.script(
        "launch.sh", "--name", "pod", "--", "--config", "c.py",
        dry_run=False, FAKE_ACCELERATOR="v4-8", PYTHON="refusing-python",
    )  # fmt: skip
    assert (
        out.returncode == 2
        and out.stderr == "error: tpu_scripts/preflight.py --accelerator v4-8 -- --config c.py\n"
    )
    (describe,) = bench.gcloud_runs()
    assert describe.startswith("compute tpus tpu-vm describe pod --zone us-central2-b --format")
