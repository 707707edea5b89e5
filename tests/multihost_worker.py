"""One process of a two-process CPU run (4 local devices each, 8 global): one GRPO step of a JAX reward and
one of a host reward (split step), parameters saved."""

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
    from engine_harness import MESH_TEST_OVERRIDES, flat, host_brightness, run_host_step, run_step

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    state, _ = run_step(MESH_TEST_OVERRIDES, tx=optax.sgd(1.0), prompts=1, devices=8)
    np.save(out_path, flat(multihost_utils.process_allgather(state.params, tiled=True)))
    # The split step of a host reward: this process scores only the 4 rows its devices hold.
    scored = []

    def host(images, prompts, arrays):
        scored.append(len(images))
        return host_brightness(images, prompts, arrays)

    state, _, _ = run_host_step(MESH_TEST_OVERRIDES, host, tx=optax.sgd(1.0), prompts=1, devices=8)
    assert scored == [4], scored
    np.save(
        out_path.replace(".npy", "_host.npy"),
        flat(multihost_utils.process_allgather(state.params, tiled=True)),
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
