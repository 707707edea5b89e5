"""Policy exports replace the previous export of their folder whole: an export cut short leaves the previous
one intact, a finished one leaves no staging folders behind."""

import runpy
from pathlib import Path

import numpy as np
import pytest

from slas_jax import weights
from slas_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_an_export_is_swapped_in_whole(tmp_path, monkeypatch):
    config = load_config(runpy.run_path(str(ROOT / "configs" / "brightness_cpu.py"))["get_config"]())
    folder = tmp_path / "policy" / "step_1"
    params = {"w": np.ones((2, 3), np.float32)}
    weights.export_policy(folder, config, params, {}, {"step": 1})
    assert weights.read_metadata(folder)["rl"]["step"] == 1

    def cut_short(partial, groups, metadata):
        (partial / "params").mkdir(parents=True)
        raise OSError("no space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(weights, "save_checkpoint", cut_short)
        with pytest.raises(OSError, match="no space left"):
            weights.export_policy(folder, config, params, {}, {"step": 2})
    assert weights.read_metadata(folder)["rl"]["step"] == 1  # the previous export, whole
    weights.export_policy(folder, config, {"w": 2 * params["w"]}, {}, {"step": 2})
    assert weights.read_metadata(folder)["rl"]["step"] == 2
    assert sorted(p.name for p in folder.parent.iterdir()) == ["step_1"]
