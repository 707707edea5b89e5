"""Group-relative advantages: DanceGRPO, mean-only, Flow-GRPO (global or per-prompt std) and Super-Linear
Advantage Shaping (SLAS).

All methods take rewards of shape (num_prompts, group_size) (one row per prompt, one column per sample drawn
for it) and return advantages of the same shape plus the statistics they used, for logging. They are pure and
jit-able; under jit with sharded inputs, group and batch statistics are global, so a group whose samples sit
on different devices is still normalised correctly.

Registry: ``ADVANTAGE_METHODS`` (``slas_jax.registry.Registry``) of ``fn(rewards, params) -> (advantages,
stats)``. Adding a method is one function under ``@ADVANTAGE_METHODS.register(name)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from slas_jax.registry import Registry

Stats = dict[str, jax.Array]
ADVANTAGE_METHODS: Registry[Callable[[jax.Array, AdvantageParams], tuple[jax.Array, Stats]]] = Registry(
    "advantage method", "advantage.method"
)


@dataclass(frozen=True, kw_only=True)
class AdvantageParams:
    """Hyper-parameters shared by the advantage methods.

    gamma: SLAS exponent offset, shaped = sign(d) |d|^(1 + gamma), gamma >= 0.
    eps: added to every standard deviation before dividing.
    adv_clip: clip advantages to [-adv_clip, adv_clip] when given (DanceGRPO and Flow-GRPO use 5).
    slas_normalize: "after" shapes the centred reward, then divides by the batch std of the shaped values
      (default); "before" divides the centred reward by its batch std, then shapes.
    """

    gamma: float = 1.0
    eps: float = 1e-6
    adv_clip: float | None = None
    slas_normalize: Literal["after", "before"] = "after"


def _group_stats(rewards: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The group means (P, 1) and the centred rewards (P, G), exactly 0 in a group whose rewards are all
    equal: the float32 mean of, say, 12 x 0.3 is not 0.3, and a method dividing the rounding residue by a
    std of the same size would turn a group without any signal into O(1) advantages."""
    mean = jnp.mean(rewards, axis=1, keepdims=True)
    tied = jnp.max(rewards, axis=1, keepdims=True) == jnp.min(rewards, axis=1, keepdims=True)
    return mean, jnp.where(tied, 0.0, rewards - mean)


def _shape(d: jax.Array, gamma: float) -> jax.Array:
    return jnp.sign(d) * jnp.abs(d) ** (1.0 + gamma)


@ADVANTAGE_METHODS.register("dance_grpo")
def dance_grpo(rewards: jax.Array, p: AdvantageParams) -> tuple[jax.Array, Stats]:
    """(r - group mean) / (unbiased group std + eps), as DanceGRPO."""
    mean, d = _group_stats(rewards)
    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)
    return d / (std + p.eps), {"group_mean": mean[:, 0], "group_std": std[:, 0]}


@ADVANTAGE_METHODS.register("mean_only")
def mean_only(rewards: jax.Array, p: AdvantageParams) -> tuple[jax.Array, Stats]:
    """r - group mean: no prompt-level std (the linear direction, "Dr.GRPO")."""
    mean, d = _group_stats(rewards)
    return d, {"group_mean": mean[:, 0]}


@ADVANTAGE_METHODS.register("slas")
def slas(rewards: jax.Array, p: AdvantageParams) -> tuple[jax.Array, Stats]:
    """Super-Linear Advantage Shaping: shape the centred reward, normalise at batch level.

    after (default): s = sign(d) |d|^(1+gamma), A = s / (std_batch(s) + eps);
    before:          e = d / (std_batch(d) + eps), A = sign(e) |e|^(1+gamma).
    Both are invariant to a positive rescaling of the rewards (up to eps).
    """
    mean, d = _group_stats(rewards)
    if p.slas_normalize == "after":
        shaped = _shape(d, p.gamma)
        batch_std = jnp.std(shaped)
        adv = shaped / (batch_std + p.eps)
    else:
        batch_std = jnp.std(d)
        adv = _shape(d / (batch_std + p.eps), p.gamma)
    return adv, {"group_mean": mean[:, 0], "batch_std": batch_std}


@ADVANTAGE_METHODS.register("flow_grpo")
def flow_grpo(rewards: jax.Array, p: AdvantageParams) -> tuple[jax.Array, Stats]:
    """(r - group mean) / (population std of all rewards in the batch + eps), as Flow-GRPO's global std."""
    mean, d = _group_stats(rewards)
    batch_std = jnp.std(rewards)
    return d / (batch_std + p.eps), {"group_mean": mean[:, 0], "batch_std": batch_std}


@ADVANTAGE_METHODS.register("flow_grpo_per_prompt")
def flow_grpo_per_prompt(rewards: jax.Array, p: AdvantageParams) -> tuple[jax.Array, Stats]:
    """(r - group mean) / (population std of the group + eps): Flow-GRPO's default (``global_std=False``),
    whose eps is 1e-4 (set ``advantage.eps``). Flow-GRPO pools the groups of a prompt drawn twice in one
    batch; here each group is its own."""
    mean, d = _group_stats(rewards)
    std = jnp.std(rewards, axis=1, keepdims=True)
    return d / (std + p.eps), {"group_mean": mean[:, 0], "group_std": std[:, 0]}


def compute_advantages_with_stats(
    rewards: jax.Array,
    *,
    method: str,
    gamma: float = 1.0,
    eps: float = 1e-6,
    adv_clip: float | None = None,
    slas_normalize: Literal["after", "before"] = "after",
) -> tuple[jax.Array, Stats]:
    """Advantages and the statistics used, for logging.

    rewards: (num_prompts, group_size) float. Returns advantages (num_prompts, group_size) float32 and a dict
    with ``group_mean`` (num_prompts,), method-specific ``group_std`` (num_prompts,) or ``batch_std`` (),
    and ``zero_std_fraction`` (), the fraction of prompts whose samples all got the same reward.
    """
    method_fn = ADVANTAGE_METHODS.get(method)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape (num_prompts, group_size >= 2), got {rewards.shape}")
    rewards = jnp.asarray(rewards, jnp.float32)
    params = AdvantageParams(gamma=gamma, eps=eps, adv_clip=adv_clip, slas_normalize=slas_normalize)
    adv, stats = method_fn(rewards, params)
    if adv_clip is not None:
        adv = jnp.clip(adv, -adv_clip, adv_clip)
    group_range = jnp.max(rewards, axis=1) - jnp.min(rewards, axis=1)
    stats["zero_std_fraction"] = jnp.mean((group_range == 0).astype(jnp.float32))
    return adv, stats


def compute_advantages(
    rewards: jax.Array,
    *,
    method: str,
    gamma: float = 1.0,
    eps: float = 1e-6,
    adv_clip: float | None = None,
    slas_normalize: Literal["after", "before"] = "after",
) -> jax.Array:
    """Advantages of shape (num_prompts, group_size) for rewards of the same shape; see the module doc."""
    adv, _ = compute_advantages_with_stats(
        rewards, method=method, gamma=gamma, eps=eps, adv_clip=adv_clip, slas_normalize=slas_normalize
    )
    return adv
