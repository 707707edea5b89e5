"""Stochastic samplers with log-probabilities: every step can draw a transition or re-score a stored one.

A sampler is addressed by step index (0 = noisiest) and exposes ``num_steps``, ``model_time(i)`` (what the
denoiser is conditioned on) and ``step(pred, i, x, *, key=None, prev_sample=None) -> (x_next, log_prob,
mean, std)``; log_prob is float32, averaged over non-batch dimensions. ``predict_x0(pred, i, x)`` is the
model's clean-sample estimate (what DanceGRPO decodes after the last step).
"""

from typing import Protocol

import jax

from slas_jax.samplers.ddim import DDIMSampler, ddim_step, ddim_timesteps, scaled_linear_alphas_cumprod
from slas_jax.samplers.flow import FlowSampler, dance_flow_step, flow_sde_step, shifted_sigmas


class Sampler(Protocol):
    """The interface the rollout and the policy loss use."""

    @property
    def num_steps(self) -> int: ...

    def model_time(self, i: jax.Array) -> jax.Array: ...

    def predict_x0(self, pred: jax.Array, i: jax.Array, x: jax.Array) -> jax.Array: ...

    def step(
        self,
        pred: jax.Array,
        i: jax.Array,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        prev_sample: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]: ...


__all__ = [
    "DDIMSampler",
    "FlowSampler",
    "Sampler",
    "dance_flow_step",
    "ddim_step",
    "ddim_timesteps",
    "flow_sde_step",
    "scaled_linear_alphas_cumprod",
    "shifted_sigmas",
]
