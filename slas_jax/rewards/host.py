"""Host rewards in the train step: the rewards that cannot run in JAX (a remote server, a detector) are
computed on the host between the two compiled halves of the step (``grpo.jit_host_reward_step``).

On a pod every process runs the same loop: it dispatches the step's rollout chunks, then for each chunk
fetches only the rows of the images its own devices hold (the batch axis is sharded over data x fsdp),
scores them, and builds its part of the global reward array, which ``jax.make_array_from_single_device_arrays``
joins with the other processes' parts without any host-to-host transfer. Scoring chunk k (in a thread)
overlaps the devices' sampling of chunk k+1 (all chunks are queued before the first is fetched). A sample the reward
could not score is NaN: the update then counts it in ``reward_nonfinite`` (replicated metrics, so every
process ends the step the same way), and the loop raises or the group is dropped (``reward.on_failure``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, Sharding

from slas_jax import parallel
from slas_jax.errors import ConfigError
from slas_jax.grpo import Batch, HostRewardStep, TrainState
from slas_jax.rewards.registry import Reward


def local_images(images: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of ``images`` (B, h, w, 3): their indices (n,) int64, sorted, and the images
    (n, h, w, 3) float32 numpy. Blocks until the computation producing them is done."""
    by_start = {shard.index[0].indices(images.shape[0])[0]: shard for shard in images.addressable_shards}
    spans = parallel.addressable_rows(images.sharding, images.shape)
    rows = np.concatenate([np.arange(start, stop) for start, stop in spans])
    return rows, np.concatenate([np.asarray(by_start[start].data) for start, _ in spans])


def global_rewards(scores: np.ndarray, rows: np.ndarray, sharding: Sharding, size: int) -> jax.Array:
    """The global (size,) float32 reward array on ``sharding`` from this process's ``scores`` (n,) of
    ``rows`` (n,) (as :func:`local_images` returns them): each local device receives its own rows."""
    offset = {int(row): i for i, row in enumerate(rows)}
    pieces = []
    for device, index in sharding.addressable_devices_indices_map((size,)).items():
        start, stop, _ = index[0].indices(size)
        pieces.append(jax.device_put(scores[offset[start] : offset[start] + stop - start], device))
    return jax.make_array_from_single_device_arrays((size,), sharding, pieces)


@dataclass
class HostScoredStep:
    """``(state, batch, key, texts) -> (state, metrics)``: one training step of a host reward.

    compiled: the two jitted halves; reward: a host :class:`Reward`; batch: prompt-level arrays (leading axis
    P) holding the arrays the reward ``reads``; texts: the P prompts. The step's rollout runs as ``chunks``
    chunks of P / chunks prompts (chunk c with key ``split(rollout_key, chunks)[c]``; one chunk uses the
    rollout key itself, as the one-jit step does). ``failures`` holds the last step's failure lines of this
    process. Metrics gain ``host_wait_s`` (time blocked on the devices for images) and ``host_reward_s``
    (time blocked on the reward after the last chunk's images arrived: the reward time the rollout did not
    hide), plain floats.
    """

    compiled: HostRewardStep
    reward: Reward
    group_size: int
    chunks: int
    mesh: Mesh
    failures: tuple[str, ...] = field(default=(), init=False)

    def __call__(
        self, state: TrainState, batch: Batch, key: jax.Array, texts: Sequence[str]
    ) -> tuple[TrainState, dict[str, Any]]:
        rollout_key, steps_key = jax.random.split(key)
        keys = [rollout_key] if self.chunks == 1 else list(jax.random.split(rollout_key, self.chunks))
        size = len(texts) // self.chunks
        parts = [slice(c * size, (c + 1) * size) for c in range(self.chunks)]
        # Dispatched before anything is fetched: the devices sample chunk k+1 while the host scores chunk k.
        rolled = [
            self.compiled.rollout(state, {k: v[part] for k, v in batch.items()}, keys[c])
            for c, part in enumerate(parts)
        ]
        waited, scoring, failures = 0.0, [], []
        # Each chunk is scored in a thread as soon as its images are here, so its requests are in flight
        # while the devices sample (and the host fetches) the next chunks.
        with ThreadPoolExecutor(self.chunks) as pool:
            for part, chunk in zip(parts, rolled, strict=True):
                start = time.perf_counter()
                rows, images = local_images(chunk[3])
                waited += time.perf_counter() - start
                prompt_index = part.start + rows // self.group_size
                arrays = {name: np.asarray(batch[name])[prompt_index] for name in self.reward.reads}
                future = pool.submit(self.reward.host, images, [texts[i] for i in prompt_index], arrays)
                scoring.append((rows, len(chunk[3]), future))
            start = time.perf_counter()
            rewards = []
            for rows, size, future in scoring:
                scores, chunk_failures = future.result()
                failures += chunk_failures
                sharding = parallel.batch_sharding(self.mesh, (size,))
                rewards.append(global_rewards(np.asarray(scores, np.float32), rows, sharding, size))
            exposed = time.perf_counter() - start
        self.failures = tuple(failures)
        state, metrics = self.compiled.update(state, rolled, rewards, steps_key)
        return state, {**metrics, "host_wait_s": waited, "host_reward_s": exposed}


def check_host_layout(samples_per_chunk: int, mesh: Mesh) -> None:
    """ConfigError unless each process holds its own rows of a chunk's images: on a multi-process run the
    chunk's B / chunks samples must divide over data x fsdp (a replicated chunk would be scored by every
    process, and only agree if the reward were deterministic)."""
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if jax.process_count() > 1 and samples_per_chunk % devices:
        raise ConfigError(
            f"config.reward.host_chunks: a chunk of {samples_per_chunk} samples does not divide over the "
            f"{devices} data x fsdp devices, so the processes could not each score their own rows; make "
            "train.prompts_per_step x train.group_size / reward.host_chunks a multiple of it"
        )
