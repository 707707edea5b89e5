"""The GRPO policy loss: re-score stored transitions, clipped surrogate, optional KL to a reference policy.

Follows DanceGRPO / Flow-GRPO: per transition, ratio = exp(log p_new - log p_old),
loss = max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)), plus beta * KL(new || ref) where both policies are
Gaussians with the same std, so KL = mean((mean_new - mean_ref)^2) / (2 std^2) over latent elements.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slas_jax.rollout import Denoiser, guided_prediction
from slas_jax.samplers import Sampler


class Transitions(NamedTuple):
    """Stored transitions to re-score, one per row.

    latents / next_latents: (n, *latent); log_probs: (n,) float32 from the rollout; step_index: (n,) int32;
    advantages: (n,) float32; cond: pytree with leading axis n.
    """

    latents: jax.Array
    next_latents: jax.Array
    log_probs: jax.Array
    step_index: jax.Array
    advantages: jax.Array
    cond: Any


def select_timesteps(
    key: jax.Array,
    batch: int,
    num_steps: int,
    *,
    fraction: float,
    exclude_first: int = 0,
    exclude_last: int = 0,
) -> jax.Array:
    """(batch, k) int32 step indices: a random subset of the trainable steps per sample (DanceGRPO style).

    Trainable steps are exclude_first .. num_steps - exclude_last - 1; k = max(1, round(fraction * trainable)).
    """
    trainable = num_steps - exclude_first - exclude_last
    k = max(1, round(fraction * trainable))
    keys = jax.random.split(key, batch)
    picked = jax.vmap(lambda kk: jax.random.permutation(kk, trainable)[:k])(keys)
    return (picked + exclude_first).astype(jnp.int32)


def rescore(
    denoise: Denoiser,
    params: Any,
    steps: Transitions,
    uncond: Any,
    *,
    sampler: Sampler,
    guidance_scale: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-prob (n,), mean (n, *latent) and std of the stored transitions under ``params``."""
    t = sampler.model_time(steps.step_index)
    pred = guided_prediction(denoise, params, steps.latents, t, steps.cond, uncond, guidance_scale)
    _, log_prob, mean, std = sampler.step(
        pred, steps.step_index, steps.latents, prev_sample=steps.next_latents
    )
    return log_prob, mean, std


def clipped_surrogate(
    log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array, clip_range: float
) -> tuple[jax.Array, jax.Array]:
    """PPO clipped surrogate per transition: returns (loss (n,), ratio (n,)), float32."""
    ratio = jnp.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return jnp.maximum(unclipped, clipped), ratio


def gaussian_kl(mean: jax.Array, ref_mean: jax.Array, std: jax.Array) -> jax.Array:
    """KL between N(mean, std^2) and N(ref_mean, std^2), averaged over latent elements: (n,) float32."""
    sq = jnp.mean((mean - ref_mean).astype(jnp.float32) ** 2, axis=tuple(range(1, mean.ndim)))
    std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), sq.shape)
    return sq / (2.0 * jnp.where(std > 0, std, 1.0) ** 2)


def policy_loss(
    params: Any,
    ref_params: Any | None,
    steps: Transitions,
    uncond: Any,
    *,
    denoise: Denoiser,
    sampler: Sampler,
    guidance_scale: float,
    clip_range: float,
    kl_beta: float,
    kl_form: str = "transition",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean GRPO loss over the n transitions, and per-batch metrics.

    ``kl_form`` "transition": the KL of the two transition Gaussians (:func:`gaussian_kl`); "flow_grpo": as
    Flow-GRPO, divided by the per-unit-time variance instead, i.e. the transition KL times the step's
    sigma_i - sigma_{i+1} (a flow sampler's ``step_size``), so the same beta weighs less, least at the
    small late steps.

    Metrics: ``policy_loss``, ``kl`` (0 without reference), ``approx_kl`` = 0.5 mean((log p - log p_old)^2),
    ``clip_fraction`` (share of |ratio - 1| > clip_range), ``ratio_mean``, ``ratio_max_dev`` = max |ratio - 1|.
    """
    log_prob, mean, std = rescore(
        denoise, params, steps, uncond, sampler=sampler, guidance_scale=guidance_scale
    )
    surrogate, ratio = clipped_surrogate(log_prob, steps.log_probs, steps.advantages, clip_range)
    loss = jnp.mean(surrogate)
    kl = jnp.zeros(())
    if ref_params is not None and kl_beta > 0:
        _, ref_mean, _ = rescore(
            denoise, ref_params, steps, uncond, sampler=sampler, guidance_scale=guidance_scale
        )
        per_transition = gaussian_kl(mean, jax.lax.stop_gradient(ref_mean), std)
        if kl_form == "flow_grpo":
            per_transition = per_transition * sampler.step_size(steps.step_index)
        kl = jnp.mean(per_transition)
        loss = loss + kl_beta * kl
    metrics = {
        "policy_loss": jnp.mean(surrogate),
        "kl": kl,
        "approx_kl": 0.5 * jnp.mean((log_prob - steps.log_probs) ** 2),
        "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > clip_range).astype(jnp.float32)),
        "ratio_mean": jnp.mean(ratio),
        "ratio_max_dev": jnp.max(jnp.abs(ratio - 1.0)),
    }
    return loss, metrics
