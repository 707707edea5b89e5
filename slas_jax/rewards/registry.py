"""Reward models by name. A reward is a pure function of (its parameters, images, per-sample batch)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from slas_jax.config import ConfigError
from slas_jax.registry import Registry

HostScores = tuple[np.ndarray, tuple[str, ...]]
"""A host reward's answer: scores (n,) float32, NaN where a sample could not be scored, and one line per
failure (naming the reward and what went wrong; empty when every sample was scored)."""
HostFn = Callable[[np.ndarray, Sequence[str], Mapping[str, np.ndarray]], HostScores]


@dataclass(frozen=True)
class Reward:
    """fn(params, images (b, h, w, 3) float32 in [0, 1], batch with leading axis b) -> rewards (b,) float32,
    computed inside the jitted step; or, for a host reward (``fn`` None), ``host``.

    params: the reward model's frozen parameters (None for programmatic rewards); they travel inside the
    train state so they are sharded and jit arguments rather than compiled-in constants.
    prepare: host-side prompts -> per-prompt arrays the reward needs in the batch (e.g. its own tokenizer's
    ids under a key of its own), merged into every training batch; None when the reward needs nothing.
    reads: the batch arrays ``fn`` reads that the prompt source must provide (``prepare``'s are its own).
    host: host(images (n, h, w, 3) float32 in [0, 1] numpy, prompts (n,), source arrays with leading axis n)
    -> :data:`HostScores`, run between the two compiled halves of the step (``slas_jax.rewards.host``) for
    rewards that cannot run in JAX (a remote server, a detector); it reports failures instead of raising, so
    that every process of a pod ends the step the same way.
    """

    fn: Callable[[Any, jax.Array, Mapping[str, jax.Array]], jax.Array] | None
    params: Any = None
    prepare: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None
    reads: tuple[str, ...] = ()
    host: HostFn | None = None

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.host is None):
            raise ValueError("a Reward has either fn (a JAX reward) or host (a host reward)")


RewardBuilder = Callable[..., Reward]
REWARDS: Registry[RewardBuilder] = Registry("reward", "reward.name")
register = REWARDS.register


def build_reward(name: str, options: Mapping[str, Any]) -> Reward:
    """The reward called ``name``, built with keyword ``options`` (checked against the builder's signature)."""
    return REWARDS.build(name, options, "reward")


def check_reads(
    reads: Sequence[str], provided: Sequence[str], reader: str, provider: str, field: str
) -> None:
    """ConfigError naming ``field`` unless every array in ``reads`` is in ``provided``: a reward or scorer
    (``reader``) fed by a prompt source (``provider``) that lacks what it reads would fail inside the step."""
    missing = [key for key in reads if key not in provided]
    if missing:
        raise ConfigError(
            f"config.{field}: {reader} reads {', '.join(missing)} from each batch, which {provider} does not "
            f"provide (it provides {', '.join(provided) or 'no arrays'}); pick a prompt source made for it"
        )
