"""A mixed reward (``reward.name="mix"``): the components of ``reward.components`` built from the registry and
scored together as one JAX reward; ``slas_jax.reward_mix`` combines their scores in the step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.config import RewardConfig
from slas_jax.errors import ConfigError
from slas_jax.rewards.registry import Reward, build_reward


def build_mixed_reward(config: RewardConfig) -> Reward:
    """One JAX reward scoring every component of ``config.components``: fn returns (b, C) float32 in the
    components' order. Each component's parameters travel under its label, and the batch arrays its
    ``prepare`` makes under ``<label>/<key>``, so that two rewards with the same keys (PickScore and CLIP score
    both tokenise into ``reward_tokens``) do not collide; each component's fn sees its own keys unprefixed."""
    labels = tuple(config.components)
    parts = {}
    for label in labels:
        component = config.component(label)
        reward = build_reward(component.name, component.options)
        if reward.fn is None:
            raise ConfigError(
                f"config.reward.components.{label}.name: {component.name!r} runs on the host; a mix takes "
                "JAX rewards only"
            )
        parts[label] = reward

    def fn(params: Mapping[str, Any], images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        columns = []
        for label, reward in parts.items():
            prefix = f"{label}/"
            own = {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}
            columns.append(reward.fn(params[label], images, {**batch, **own}).astype(jnp.float32))
        return jnp.stack(columns, axis=1)

    def prepare(texts: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for label, reward in parts.items():
            if reward.prepare is not None:
                out.update({f"{label}/{k}": v for k, v in reward.prepare(texts).items()})
        return out

    reads = tuple(dict.fromkeys(key for reward in parts.values() for key in reward.reads))
    return Reward(fn=fn, params={label: r.params for label, r in parts.items()}, prepare=prepare, reads=reads)
