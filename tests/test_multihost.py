"""Two local processes joined with jax.distributed compute the same GRPO update as one process, with a JAX
reward (one jit) and with a host reward (each process scoring its own rows of the images)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest
from engine_harness import MESH_TEST_OVERRIDES, flat, run_step

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), port, str(tmp_path / f"p{i}.npy")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
    single, _ = run_step(MESH_TEST_OVERRIDES, tx=optax.sgd(1.0), prompts=1)
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"p{i}.npy"), flat(single.params), rtol=1e-4, atol=2e-6)
        host = np.load(tmp_path / f"p{i}_host.npy")
        np.testing.assert_allclose(host, flat(single.params), rtol=1e-4, atol=2e-6)
