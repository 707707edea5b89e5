"""The training CLI: bad command lines end with one actionable line on stderr, exit code 2, no traceback."""

import subprocess
from pathlib import Path

import pytest
from cli_runner import one_line_error, run_module

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "brightness_cpu.py")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("slas_jax.train", *args)


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
    assert expected in one_line_error(out)
    assert "Traceback" not in out.stderr
