"""Stochastic samplers for flow-matching models (FLUX, SD3): the Flow-GRPO SDE and DanceGRPO's FLUX step.

Convention: x_sigma = (1 - sigma) x0 + sigma noise, the model predicts the velocity v = noise - x0, and
sampling walks sigma from 1 down to 0 (dt = sigma_next - sigma < 0).

Flow-GRPO (noise level a):
  std_t = a sqrt(sigma / (1 - sigma)),
  mean  = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt,
  x_next = mean + std_t sqrt(-dt) z.
DanceGRPO (eta), score-based form with x0 = x - sigma v and score = -(x - (1 - sigma) x0) / sigma^2:
  mean = x + dt v - eta^2 score dt / 2,  x_next = mean + eta sqrt(sigma - sigma_next) z.
With a = 0 or eta = 0 both reduce to the Euler step of the probability-flow ODE, x + dt v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.samplers.gaussian import gaussian_transition, stochastic_level


def time_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """SD3 / DanceGRPO shift: shift s / (1 + (shift - 1) s). Same shape and dtype as ``sigmas``."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def dynamic_shift_mu(
    image_seq_len: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent shift parameter mu, linear in the packed image sequence length."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def exponential_time_shift(sigmas: np.ndarray, mu: float) -> np.ndarray:
    """FLUX's dynamic shifting: e^mu / (e^mu + (1 / s - 1)); keeps s = 0 at 0 and s = 1 at 1."""
    sigmas = np.asarray(sigmas, np.float64)
    with np.errstate(divide="ignore"):
        shifted = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    return np.where(sigmas > 0, shifted, 0.0)


def shifted_sigmas(num_steps: int, shift: float = 1.0, *, mu: float | None = None) -> np.ndarray:
    """(num_steps + 1,) float64 sigmas from 1 to 0: linear, then ``time_shift`` (or exponential with mu)."""
    sigmas = np.linspace(1.0, 0.0, num_steps + 1)
    return exponential_time_shift(sigmas, mu) if mu is not None else time_shift(sigmas, shift)


def _expand(a: jax.Array, like: jax.Array) -> jax.Array:
    a = jnp.asarray(a, jnp.float32)
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim)) if a.ndim else a


def flow_sde_step(
    v: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    x: jax.Array,
    *,
    noise_level: float,
    key: jax.Array | None = None,
    prev_sample: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Flow-GRPO's SDE step sigma -> sigma_next, drawn with ``key`` or re-scored at ``prev_sample``.

    v, x: (batch, ...); sigma, sigma_next: scalars or (batch,) in [0, 1]. At sigma == 1 the std uses
    sigma_next in the denominator, as Flow-GRPO does (its sigma_max = sigmas[1]).
    Returns (x_next in x's dtype, log_prob (batch,) float32, mean float32, std of the transition float32).
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    sigma_next = jnp.asarray(sigma_next, jnp.float32)
    dt = sigma_next - sigma
    std_t = noise_level * jnp.sqrt(sigma / (1.0 - jnp.where(sigma >= 1.0, sigma_next, sigma)))
    x32, v32 = x.astype(jnp.float32), v.astype(jnp.float32)
    drift_x = 1.0 + std_t**2 / (2.0 * sigma) * dt
    drift_v = (1.0 + std_t**2 * (1.0 - sigma) / (2.0 * sigma)) * dt
    mean = _expand(drift_x, x32) * x32 + _expand(drift_v, x32) * v32
    std = std_t * jnp.sqrt(-dt)
    x_next, log_prob = gaussian_transition(mean, std, key=key, prev_sample=prev_sample, dtype=x.dtype)
    return x_next, log_prob, mean, std


def dance_flow_step(
    v: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    x: jax.Array,
    *,
    eta: float,
    key: jax.Array | None = None,
    prev_sample: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """DanceGRPO's FLUX step (score-based SDE, std eta sqrt(sigma - sigma_next)); arguments as flow_sde_step."""
    sigma = jnp.asarray(sigma, jnp.float32)
    sigma_next = jnp.asarray(sigma_next, jnp.float32)
    dt = sigma_next - sigma
    x32, v32 = x.astype(jnp.float32), v.astype(jnp.float32)
    s = _expand(sigma, x32)
    x0 = x32 - s * v32
    score = -(x32 - x0 * (1.0 - s)) / s**2
    mean = x32 + _expand(dt, x32) * (v32 - 0.5 * eta**2 * score)
    std = eta * jnp.sqrt(-dt)
    x_next, log_prob = gaussian_transition(mean, std, key=key, prev_sample=prev_sample, dtype=x.dtype)
    return x_next, log_prob, mean, std


@dataclass(frozen=True, kw_only=True)
class FlowSchedule:
    """A flow-matching model's sigmas at the sampling steps: what a sampler of the FLUX family builds on
    (``slas_jax.samplers.SAMPLERS``). sigmas: (num_steps + 1,) float64 from 1 to 0 (see shifted_sigmas)."""

    sigmas: np.ndarray


@dataclass(frozen=True, kw_only=True)
class FlowSampler:
    """A flow-matching SDE over a fixed sigma schedule, addressed by step index (0 = noisiest).

    sigmas: (num_steps + 1,) from 1 to 0; form: "flow_grpo" (noise_level = a) or "dance" (noise_level = eta).
    sde_window: the step indices [start, end) that draw noise; the others take the deterministic ODE step
    (log_prob 0), as Flow-GRPO-Fast and MixGRPO do. None: every step is stochastic.
    The denoiser is conditioned on sigma itself (FLUX scales it by 1000 inside the model).
    """

    sigmas: np.ndarray
    noise_level: float
    form: str = "flow_grpo"
    sde_window: tuple[int, int] | None = None

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def model_time(self, i: jax.Array) -> jax.Array:
        """sigma at step index i (scalar or (batch,)), float32."""
        return jnp.asarray(self.sigmas, jnp.float32)[i]

    def step_size(self, i: jax.Array) -> jax.Array:
        """sigma_i - sigma_{i+1} (= -dt > 0) at step index i (scalar or (batch,)), float32: a transition's
        variance is its per-unit-time variance times this."""
        sigmas = jnp.asarray(self.sigmas, jnp.float32)
        return sigmas[i] - sigmas[i + 1]

    def predict_x0(self, pred: jax.Array, i: jax.Array, x: jax.Array) -> jax.Array:
        """The model's clean-sample estimate at step index i: x - sigma v, float32."""
        sigma = jnp.asarray(self.sigmas, jnp.float32)[i]
        return x.astype(jnp.float32) - _expand(sigma, x) * pred.astype(jnp.float32)

    def step(
        self,
        pred: jax.Array,
        i: jax.Array,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        prev_sample: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """The configured SDE step at index i; returns (x_next, log_prob, mean, std)."""
        sigmas = jnp.asarray(self.sigmas, jnp.float32)
        step = flow_sde_step if self.form == "flow_grpo" else dance_flow_step
        noise = stochastic_level(self.noise_level, i, self.sde_window)
        level = {"noise_level": noise} if self.form == "flow_grpo" else {"eta": noise}
        return step(pred, sigmas[i], sigmas[i + 1], x, key=key, prev_sample=prev_sample, **level)
