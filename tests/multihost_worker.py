"""One process of a two-process CPU run (4 local devices each, 8 global): one GRPO step, parameters saved."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from slas_jax.parallel import initialize_distributed


def main(process_id: int, port: str, out_path: str) -> None:
    initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from engine_harness import MESH_TEST_OVERRIDES, flat, run_step

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    state, _ = run_step(MESH_TEST_OVERRIDES, tx=optax.sgd(1.0), prompts=1, devices=8)
    np.save(out_path, flat(multihost_utils.process_allgather(state.params, tiled=True)))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
