"""Reward models by name. A reward is a pure function of (its parameters, images, per-sample batch)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np


@dataclass(frozen=True)
class Reward:
    """fn(params, images (b, h, w, 3) float32 in [0, 1], batch with leading axis b) -> rewards (b,) float32.

    params: the reward model's frozen parameters (None for programmatic rewards); they travel inside the
    train state so they are sharded and jit arguments rather than compiled-in constants.
    prepare: host-side prompts -> per-prompt arrays the reward needs in the batch (e.g. its own tokenizer's
    ids under a key of its own), merged into every training batch; None when the reward needs nothing.
    """

    fn: Callable[[Any, jax.Array, Mapping[str, jax.Array]], jax.Array]
    params: Any = None
    prepare: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None


RewardBuilder = Callable[..., Reward]
REWARDS: dict[str, RewardBuilder] = {}


def register(name: str) -> Callable[[RewardBuilder], RewardBuilder]:
    """Decorator adding a builder ``(**options) -> Reward`` under ``name``."""

    def add(builder: RewardBuilder) -> RewardBuilder:
        REWARDS[name] = builder
        return builder

    return add


def build_reward(name: str, options: Mapping[str, Any]) -> Reward:
    """The reward called ``name``, built with keyword ``options``."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(sorted(REWARDS))}")
    return REWARDS[name](**options)
