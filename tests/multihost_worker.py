"""One process of a two-process CPU run (4 local devices each, 8 global).

``python multihost_worker.py PROCESS_ID PORT HOST_PARAMS_NPY TRAIN_ARGS...``: first the training CLI exactly
as ``python -m slas_jax.train TRAIN_ARGS --multihost ...`` runs it (it joins the run), then, in the joined
process, one step of a host reward (the split step) on 8 prompts, whose parameters it saves.
"""

import os
import runpy
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import numpy as np
import optax


def train_cli(process_id: int, port: str, train_args: list[str]) -> None:
    """``python -m slas_jax.train TRAIN_ARGS`` joining the two-process run on 127.0.0.1:PORT."""
    sys.argv = [
        "slas_jax.train",
        *train_args,
        "--multihost",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={process_id}",
    ]
    try:
        runpy.run_module("slas_jax.train", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        assert e.code == 0, f"the training CLI exited with {e.code}"


def host_reward_step(out_path: str) -> None:
    """The split step of a host reward: this process scores only the 8 rows of the 16 images its devices
    hold. The 8 prompts are split over the 8 devices; a host reward reads them all on every process."""
    from engine_harness import SPLIT_BATCH_OVERRIDES, flat, host_brightness, run_host_step

    from slas_jax import parallel

    scored = []

    def host(images, prompts, arrays):
        scored.append(len(images))
        return host_brightness(images, prompts, arrays)

    state, _, _ = run_host_step(SPLIT_BATCH_OVERRIDES, host, tx=optax.sgd(1.0), prompts=8, devices=8)
    assert scored == [8], scored
    np.save(out_path, flat(parallel.host_value(state.params)))


def main(process_id: int, port: str, out_path: str, train_args: list[str]) -> None:
    train_cli(process_id, port, train_args)
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    host_reward_step(out_path)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
