"""The training CLI: bad command lines end with one actionable line on stderr, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "brightness_cpu.py")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slas_jax.train", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--config", CONFIG, "--config.advantage.method=ppo"),
            "config.advantage.method: unknown method 'ppo'",
        ),
        (("--config", CONFIG, "--config.advantage.gamma=-1"), "config.advantage.gamma: must be >= 0"),
        (("--config", CONFIG, "--config.train.group_size=1"), "config.train.group_size: must be >= 2"),
        (("--config", CONFIG, "--config.advantage.gama=1"), "unknown config key 'advantage.gama'"),
        (("--config", CONFIG, "--config.train.num_steps=abc"), "--config.train.num_steps=abc"),
        (("--config", "configs/nope.py"), "config file configs/nope.py does not exist"),
        ((), "missing --config"),
        (("--config", CONFIG, "--config.sampler.name=flow_sde"), "does not fit model.family='unet'"),
        (
            ("--config", str(ROOT / "configs" / "shapes_cpu.py:unet,bogus")),
            "unknown shapes_cpu variant 'bogus': choose from backbones",
        ),
    ],
)
def test_bad_command_lines_fail_with_one_line(args, expected):
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert expected in lines[0]
    assert "Traceback" not in out.stderr
