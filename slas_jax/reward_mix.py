"""Reward mixing: several registered rewards scored on the same images, weighted into one training signal.

DanceGRPO trains on HPS-v2.1 plus CLIP score; MixGRPO and Flow-Factory offer the same mix either on the
rewards (one advantage of the weighted sum) or on the advantages (one advantage per component, weighted).
``reward.components`` names the components (``{label: {"name", "options", "weight", "normalize"}}``) and
``reward.aggregate`` picks where they meet.

This module is the pure maths the train step applies to the (b, C) float32 matrix of component scores that
``slas_jax.rewards.mix.build_mixed_reward`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from slas_jax.config import RewardConfig


@dataclass(frozen=True)
class RewardMix:
    """How the C components of a mixed reward combine: ``labels`` (C,) name them in the metrics, ``weights``
    (C,) scale them, ``normalize`` (C,) marks those standardised over the step's batch first (so that rewards
    of different scales, e.g. PickScore ~20 and CLIP score ~0.3, weigh as their weights say); ``aggregate``
    "rewards" sums the weighted rewards before the advantages, "advantages" sums the weighted per-component
    advantages. ``eps`` is added to the batch std of a normalised component."""

    labels: tuple[str, ...]
    weights: tuple[float, ...]
    normalize: tuple[bool, ...]
    aggregate: Literal["rewards", "advantages"]
    eps: float

    @classmethod
    def from_config(cls, reward: RewardConfig, eps: float) -> RewardMix | None:
        """The mix of ``reward.components`` (None for a single reward); ``eps``: the advantages' eps."""
        if not reward.components:
            return None
        labels = tuple(reward.components)
        parts = [reward.component(label) for label in labels]
        return cls(
            labels=labels,
            weights=tuple(p.weight for p in parts),
            normalize=tuple(p.normalize for p in parts),
            aggregate=reward.aggregate,
            eps=eps,
        )


def finite_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mean and population std () float32 of the finite entries of x (b,) (0 when there are none): a
    failed sample (NaN) does not spoil the statistics of the others."""
    finite = jnp.isfinite(x)
    count = jnp.maximum(jnp.sum(finite), 1)
    mean = jnp.sum(jnp.where(finite, x, 0.0)) / count
    return mean, jnp.sqrt(jnp.sum(jnp.where(finite, (x - mean) ** 2, 0.0)) / count)


def _finite_standardize(x: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / (std + eps) over the finite entries of x (b,) (:func:`finite_moments`); a failed sample
    stays NaN."""
    mean, std = finite_moments(x)
    return (x - mean) / (std + eps)


def prepared_components(components: jax.Array, mix: RewardMix) -> jax.Array:
    """components: (b, C) float32 -> (b, C) float32, the columns ``mix.normalize`` marks standardised over
    the batch, the others as they are."""
    columns = [
        _finite_standardize(components[:, c], mix.eps) if mix.normalize[c] else components[:, c]
        for c in range(components.shape[1])
    ]
    return jnp.stack(columns, axis=1)


def mixed_rewards(components: jax.Array, mix: RewardMix) -> jax.Array:
    """The training reward of a mix: (b, C) float32 -> (b,) float32, the weighted sum of the prepared
    components (:func:`prepared_components`)."""
    return prepared_components(components, mix) @ jnp.asarray(mix.weights, jnp.float32)


def component_advantages(
    components: jax.Array,
    mix: RewardMix,
    advantages_of: Callable[[jax.Array], tuple[jax.Array, dict[str, jax.Array]]],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``aggregate="advantages"``: the weighted sum of each prepared component's advantages.

    components: (b, C) float32; advantages_of: rewards (b,) -> (advantages (P, G), stats), the run's
    advantage method. Returns advantages (P, G) float32 and the statistics of the first component, with
    ``zero_std_fraction`` the fraction of groups tied in every component.
    """
    # A sample one component failed to score fails in all, so that every component drops the same groups.
    failed = ~jnp.all(jnp.isfinite(components), axis=1, keepdims=True)
    prepared = jnp.where(failed, jnp.nan, prepared_components(components, mix))
    total, stats, tied = None, None, None
    for c, weight in enumerate(mix.weights):
        advantages, component_stats = advantages_of(prepared[:, c])
        total = weight * advantages if total is None else total + weight * advantages
        if stats is None:
            stats = dict(component_stats)
        group_tied = jnp.all(advantages == 0, axis=1)
        tied = group_tied if tied is None else tied & group_tied
    stats["zero_std_fraction"] = jnp.mean(tied.astype(jnp.float32))
    return total, stats


def component_metrics(components: jax.Array, mix: RewardMix) -> dict[str, jax.Array]:
    """``reward/<label>``: each component's mean over its finite raw scores, () float32."""
    return {f"reward/{label}": finite_moments(components[:, c])[0] for c, label in enumerate(mix.labels)}
