"""The Gaussian transition shared by every stochastic sampler step: draw or re-score, float32 log-prob."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_transition(
    mean: jax.Array,
    std: jax.Array,
    *,
    key: jax.Array | None,
    prev_sample: jax.Array | None,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Draws ``mean + std * z`` (or takes ``prev_sample``) and its log-density under N(mean, std^2).

    mean: (batch, ...) float32; std: broadcastable to mean (per-sample (batch,) is expanded); dtype: the
    dtype a drawn sample is stored in. The log-density is always that of the stored (cast) sample, so a
    later re-scoring of the same transition reproduces it exactly.
    Returns (sample, log_prob) with sample in ``dtype`` and log_prob (batch,) float32: the per-element
    log-density averaged over the non-batch dimensions (the DDPO / DanceGRPO / Flow-GRPO convention, which
    makes log-probs comparable across resolutions). Where std == 0 the step is deterministic and log_prob 0.
    """
    std = jnp.asarray(std, jnp.float32)
    if std.ndim == 1 and mean.ndim > 1:
        std = std.reshape(std.shape + (1,) * (mean.ndim - 1))
    if prev_sample is None:
        if key is None:
            raise ValueError("a sampler step needs either key (to draw) or prev_sample (to re-score)")
        noise = jax.random.normal(key, mean.shape, jnp.float32)
        prev_sample = (mean.astype(jnp.float32) + std * noise).astype(dtype)
    diff = jax.lax.stop_gradient(prev_sample).astype(jnp.float32) - mean.astype(jnp.float32)
    safe_std = jnp.where(std > 0, std, 1.0)
    log_density = -(diff**2) / (2.0 * safe_std**2) - jnp.log(safe_std) - _LOG_SQRT_2PI
    log_density = jnp.where(std > 0, log_density, 0.0)
    log_prob = jnp.mean(log_density, axis=tuple(range(1, log_density.ndim)))
    return prev_sample, log_prob


def stochastic_level(noise_level: float, i: jax.Array, window: tuple[int, int] | None) -> float | jax.Array:
    """The noise level at step index i (scalar or (batch,)): ``noise_level`` inside ``window`` = [start, end)
    (everywhere when None), 0 outside it, where a step is deterministic."""
    if window is None:
        return noise_level
    start, end = window
    i = jnp.asarray(i)
    return jnp.where((i >= start) & (i < end), jnp.float32(noise_level), jnp.float32(0.0))
