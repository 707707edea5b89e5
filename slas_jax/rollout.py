"""Whole sampling trajectories with log-probabilities, for a batch of prompts x group, under ``lax.scan``.

The denoiser is any pure function ``denoise(params, x, t, cond) -> prediction`` with x: (batch, *latent),
t: (batch,) float32 (the sampler's model time), cond: a pytree of arrays with leading axis batch.
Classifier-free guidance runs the conditional and unconditional halves in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slas_jax.samplers import Sampler

Denoiser = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


class Trajectory(NamedTuple):
    """Stored rollouts, batch-first.

    latents: (batch, steps, *latent) x before each transition; next_latents: (batch, steps, *latent) x after;
    log_probs: (batch, steps) float32; final: (batch, *latent) the last sampled latent; final_prediction:
    (batch, *latent) float32, the model's clean-sample estimate at the last step (DanceGRPO decodes this;
    it differs from ``final`` where the last transition still adds noise, as flow SDEs do).
    """

    latents: jax.Array
    next_latents: jax.Array
    log_probs: jax.Array
    final: jax.Array
    final_prediction: jax.Array


def repeat_per_sample(tree: Any, group_size: int) -> Any:
    """Repeats every leaf's leading (prompt) axis ``group_size`` times: (prompts, ...) -> (prompts*group, ...)."""
    return jax.tree.map(lambda a: jnp.repeat(a, group_size, axis=0), tree)


def guided_prediction(
    denoise: Denoiser,
    params: Any,
    x: jax.Array,
    t: jax.Array,
    cond: Any,
    uncond: Any,
    guidance_scale: float,
) -> jax.Array:
    """CFG: uncond + s (cond - uncond), one batched call; plain conditional prediction when s == 1.

    x: (batch, *latent); t: (batch,); cond / uncond: pytrees with leading axis batch.
    """
    if guidance_scale == 1.0:
        return denoise(params, x, t, cond)
    both = jax.tree.map(lambda u, c: jnp.concatenate([u, c]), uncond, cond)
    pred = denoise(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    pred_uncond, pred_cond = jnp.split(pred, 2)
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


def initial_noise(
    key: jax.Array, num_prompts: int, group_size: int, latent_shape: tuple[int, ...], *, same_in_group: bool
) -> jax.Array:
    """(prompts*group, *latent) float32 standard normal; one draw per prompt when ``same_in_group``."""
    if same_in_group:
        noise = jax.random.normal(key, (num_prompts, 1, *latent_shape))
        noise = jnp.broadcast_to(noise, (num_prompts, group_size, *latent_shape))
    else:
        noise = jax.random.normal(key, (num_prompts, group_size, *latent_shape))
    return noise.reshape(num_prompts * group_size, *latent_shape)


def sample_trajectories(
    denoise: Denoiser,
    params: Any,
    cond: Any,
    uncond: Any,
    key: jax.Array,
    *,
    sampler: Sampler,
    latent_shape: tuple[int, ...],
    group_size: int,
    guidance_scale: float = 1.0,
    same_noise_in_group: bool = False,
    dtype: jnp.dtype = jnp.float32,
    branch_groups: bool = True,
) -> Trajectory:
    """Samples ``group_size`` trajectories for each prompt.

    cond: pytree with leading axis num_prompts; uncond: pytree with leading axis 1 (the empty prompt), used
    only when guidance_scale != 1. Sample b belongs to prompt b // group_size. With ``same_noise_in_group``
    and an SDE window the deterministic steps before the window run once per prompt and the group branches
    at the window (:func:`shared_steps`): the same trajectories up to float rounding, with the work of those
    steps divided by ``group_size``; ``branch_groups=False`` takes every sample through every step instead.
    """
    num_prompts = jax.tree.leaves(cond)[0].shape[0]
    noise_key, step_key = jax.random.split(key)
    x0 = initial_noise(noise_key, num_prompts, group_size, latent_shape, same_in_group=same_noise_in_group)
    shared = (
        shared_steps(sampler, group_size, same_noise_in_group=same_noise_in_group) if branch_groups else 0
    )

    def run(x: jax.Array, prediction: jax.Array, cond_x: Any, steps: jax.Array) -> tuple[Any, Any]:
        n = x.shape[0]
        uncond_x = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape[1:])), uncond)

        def body(carry, i):
            x, _ = carry
            t = jnp.broadcast_to(sampler.model_time(i), (n,))
            pred = guided_prediction(denoise, params, x, t, cond_x, uncond_x, guidance_scale)
            x_next, log_prob, _, _ = sampler.step(pred, i, x, key=jax.random.fold_in(step_key, i))
            return (x_next, sampler.predict_x0(pred, i, x)), (x, x_next, log_prob)

        return jax.lax.scan(body, (x, prediction), steps)

    x = x0.astype(dtype)
    prediction = jnp.zeros(x0.shape, jnp.float32)
    prefix = None
    if shared:
        # The group's samples are one trajectory until the first noisy step: compute it once per prompt.
        (x, prediction), prefix = run(x[::group_size], prediction[::group_size], cond, jnp.arange(shared))
        x, prediction = repeat_per_sample((x, prediction), group_size)
        prefix = jax.tree.map(lambda a: jnp.repeat(a, group_size, axis=1), prefix)
    (final, final_prediction), stacked = run(
        x, prediction, repeat_per_sample(cond, group_size), jnp.arange(shared, sampler.num_steps)
    )
    if prefix is not None:
        stacked = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), prefix, stacked)
    latents, next_latents, log_probs = stacked
    return Trajectory(
        latents=jnp.swapaxes(latents, 0, 1),
        next_latents=jnp.swapaxes(next_latents, 0, 1),
        log_probs=jnp.swapaxes(log_probs, 0, 1),
        final=final,
        final_prediction=final_prediction,
    )


def shared_steps(sampler: Sampler, group_size: int, *, same_noise_in_group: bool) -> int:
    """How many leading steps a group's samples share: with one initial noise per group, every step before
    the sampler's SDE window is deterministic and the same for the whole group (0 otherwise)."""
    window = sampler.sde_window
    if not same_noise_in_group or window is None or group_size == 1:
        return 0
    return min(window[0], sampler.num_steps)
