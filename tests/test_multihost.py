"""Two local processes joined with jax.distributed (4 CPU devices each) train as one process of 8 devices:
through the training CLI with the prompt batch split across the processes and the parameters sharded
across them (mesh.fsdp=8), and through the split step of a host reward (each process scoring its own rows
of the images)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from engine_harness import flat, split_batch_step_on_one_device

from slas_jax.train import main

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("multihost_worker.py")
ROOT = WORKER.parents[1]
TIMEOUT_S = 420

TRAIN_ARGS = [
    "--config",
    str(ROOT / "configs" / "brightness_cpu.py"),
    "--config.train.num_steps=1",
    "--config.train.prompts_per_step=8",
    "--config.train.group_size=2",
    "--config.train.micro_batch_size=16",
    "--config.train.export_every=1",
    "--config.train.tensorboard=false",
    "--config.mesh.fsdp=8",
    "--config.model.resolution=8",
    "--config.sampler.num_steps=2",
    "--config.loss.exclude_last_steps=0",
    "--config.model.architecture.block_out_channels=(8,)",
    "--config.model.architecture.down_block_types=('CrossAttnDownBlock2D',)",
    "--config.model.architecture.up_block_types=('CrossAttnUpBlock2D',)",
    "--config.model.text_architecture.hidden_size=8",
    "--config.model.text_architecture.intermediate_size=16",
    "--config.model.text_architecture.num_hidden_layers=1",
]
"""A tiny random UNet on the brightness task: 8 prompts over the 8 fsdp devices, so each process loads 4 of
them, and the parameters sharded over all 8 devices, so the policy export gathers across the processes."""

SAME_METRICS = ("reward_mean", "reward_std", "policy_loss", "grad_norm", "kl", "advantage_abs_mean")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # Output to files, not pipes: a chatty process must never block on a pipe nobody reads yet.
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)


def exported_params(run_dir: Path) -> dict[str, np.ndarray]:
    return ocp.StandardCheckpointer().restore(run_dir / "policy" / "step_1" / "params")


def test_two_processes_train_as_one_process_of_8_devices(tmp_path, capsys):
    # The workers import this checkout's slas_jax and the engine harness.
    path = os.pathsep.join(filter(None, [str(WORKER.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    port = str(free_port())
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    procs = [
        launch(
            [
                *(sys.executable, str(WORKER), str(i), port, str(tmp_path / f"host_{i}.npy")),
                *(*TRAIN_ARGS, f"--config.train.output_dir={two}"),
            ],
            tmp_path / f"process_{i}.log",
            env,
        )
        for i in range(2)
    ]
    try:
        # Meanwhile the same run in this process, on its 8 devices (the suite's XLA_FLAGS).
        code = main(["slas_jax.train", *TRAIN_ARGS, f"--config.train.output_dir={one}"])
        single = capsys.readouterr()
        assert code == 0, single.err[-3000:]
        one_device_step, _ = split_batch_step_on_one_device()
        for proc in procs:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc in procs:
            proc.kill()
    logs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]

    # Each process loaded its half of the prompt batch; process 0 alone reports and shows the progress bar.
    assert "[process 0/2] 4 of 8 devices; loads prompts 0-3 of each batch of 8" in logs[0]
    assert "[process 1/2] 4 of 8 devices; loads prompts 4-7 of each batch of 8" in logs[1]
    report = (
        "replicated (axis does not divide): 1 parameter, 864 B: conv_in.kernel (864 B, conv_in=3 on fsdp=8)"
    )
    assert report in logs[0] and report in single.out and "replicated" not in logs[1]
    assert "GRPO" in logs[0] and "GRPO" not in logs[1]

    # The same update and metrics; process 0 alone wrote the shared run folder's metrics.
    got, expected = exported_params(two), exported_params(one)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    (reference,) = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0]
    for name in SAME_METRICS:
        np.testing.assert_allclose(records[0][name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)

    # The split step of a host reward, on both processes, equals one device's one-jit step.
    for i in range(2):
        np.testing.assert_allclose(
            np.load(tmp_path / f"host_{i}.npy"), flat(one_device_step.params), rtol=1e-4, atol=1e-5
        )
