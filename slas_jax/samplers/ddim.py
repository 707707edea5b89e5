"""DDIM with eta for epsilon- and v-prediction models (Stable Diffusion 1.x/2.x), as used by DDPO/DanceGRPO.

With a_t = alphas_cumprod[t] and a_p = alphas_cumprod[prev_t] (``final_alpha_cumprod`` when prev_t < 0):
sigma_t = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p), x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),
mean = sqrt(a_p) x0 + sqrt(1 - a_p - sigma_t^2) eps, x_prev = mean + sigma_t z.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.samplers.gaussian import gaussian_transition, stochastic_level


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
) -> np.ndarray:
    """alphas_cumprod (num_train_timesteps,) float64 for diffusers' "scaled_linear" or "linear" betas."""
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {beta_schedule!r}; use 'scaled_linear' or 'linear'")
    return np.cumprod(1.0 - betas)


def ddim_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' "leading" DDIM spacing: (timesteps, prev_timesteps), each (num_inference_steps,) int32.

    The last prev_timestep is negative, meaning "use final_alpha_cumprod".
    """
    ratio = num_train_timesteps // num_inference_steps
    timesteps = (np.arange(num_inference_steps) * ratio)[::-1] + steps_offset
    return timesteps.astype(np.int32), (timesteps - ratio).astype(np.int32)


def _expand(a: jax.Array, like: jax.Array) -> jax.Array:
    a = jnp.asarray(a, jnp.float32)
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim)) if a.ndim else a


def ddim_step(
    eps: jax.Array,
    t: jax.Array,
    prev_t: jax.Array,
    x_t: jax.Array,
    alphas_cumprod: jax.Array,
    *,
    eta: float,
    key: jax.Array | None = None,
    prev_sample: jax.Array | None = None,
    final_alpha_cumprod: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One DDIM transition x_t -> x_prev, drawn with ``key`` or re-scored at ``prev_sample``.

    eps: (batch, ...) predicted noise; t, prev_t: int scalars or (batch,); x_t: (batch, ...);
    alphas_cumprod: (num_train_timesteps,). Arithmetic runs in float32.
    Returns (x_prev (batch, ...) in x_t's dtype, log_prob (batch,) float32, mean (batch, ...) float32,
    std (batch,) or () float32).
    """
    alphas_cumprod = jnp.asarray(alphas_cumprod, jnp.float32)
    t = jnp.asarray(t)
    prev_t = jnp.asarray(prev_t)
    a_t = alphas_cumprod[t]
    a_p = jnp.where(prev_t >= 0, alphas_cumprod[jnp.maximum(prev_t, 0)], final_alpha_cumprod)
    std = eta * jnp.sqrt((1.0 - a_p) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_p)
    x32, eps32 = x_t.astype(jnp.float32), eps.astype(jnp.float32)
    x0 = (x32 - _expand(jnp.sqrt(1.0 - a_t), x32) * eps32) / _expand(jnp.sqrt(a_t), x32)
    direction = _expand(jnp.sqrt(jnp.maximum(1.0 - a_p - std**2, 0.0)), x32) * eps32
    mean = _expand(jnp.sqrt(a_p), x32) * x0 + direction
    x_prev, log_prob = gaussian_transition(mean, std, key=key, prev_sample=prev_sample, dtype=x_t.dtype)
    return x_prev.astype(x_t.dtype), log_prob, mean, std


def v_to_eps(v: jax.Array, t: jax.Array, x_t: jax.Array, alphas_cumprod: jax.Array) -> jax.Array:
    """Converts a v-prediction into eps: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t. Shapes as x_t."""
    a_t = jnp.asarray(alphas_cumprod, jnp.float32)[jnp.asarray(t)]
    return _expand(jnp.sqrt(a_t), x_t) * v.astype(jnp.float32) + _expand(
        jnp.sqrt(1.0 - a_t), x_t
    ) * x_t.astype(jnp.float32)


@dataclass(frozen=True, kw_only=True)
class DiffusionSchedule:
    """A diffusion model's noise schedule at the sampling steps, as its scheduler defines it: what a sampler of
    the UNet family builds on (``slas_jax.samplers.SAMPLERS``).

    alphas_cumprod: (num_train_timesteps,) float64; timesteps / prev_timesteps: (num_steps,) int32, noisiest
    first (see ddim_timesteps; a negative prev_timestep means "final_alpha_cumprod"); prediction_type: what the
    model outputs, "epsilon" or "v_prediction".
    """

    alphas_cumprod: np.ndarray
    timesteps: np.ndarray
    prev_timesteps: np.ndarray
    final_alpha_cumprod: float = 1.0
    prediction_type: str = "epsilon"


@dataclass(frozen=True, kw_only=True)
class DDIMSampler:
    """DDIM over a fixed step schedule, addressed by step index (0 = noisiest).

    alphas_cumprod: (num_train_timesteps,); timesteps / prev_timesteps: (num_steps,) int (see ddim_timesteps);
    prediction_type: "epsilon" or "v_prediction" (the model output is converted to eps before the step);
    sde_window: the step indices [start, end) that draw noise, the others deterministic (eta 0, log_prob 0);
    None: every step is stochastic.
    """

    alphas_cumprod: np.ndarray
    timesteps: np.ndarray
    prev_timesteps: np.ndarray
    eta: float
    final_alpha_cumprod: float = 1.0
    prediction_type: str = "epsilon"
    sde_window: tuple[int, int] | None = None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def model_time(self, i: jax.Array) -> jax.Array:
        """The timestep the denoiser is conditioned on at step index i (scalar or (batch,)), float32."""
        return jnp.asarray(self.timesteps, jnp.float32)[i]

    def _eps(self, pred: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
        return v_to_eps(pred, t, x, self.alphas_cumprod) if self.prediction_type == "v_prediction" else pred

    def predict_x0(self, pred: jax.Array, i: jax.Array, x: jax.Array) -> jax.Array:
        """The model's clean-sample estimate at step index i: (x - sqrt(1 - a_t) eps) / sqrt(a_t), float32."""
        t = jnp.asarray(self.timesteps)[i]
        a_t = jnp.asarray(self.alphas_cumprod, jnp.float32)[t]
        eps = self._eps(pred, t, x).astype(jnp.float32)
        return (x.astype(jnp.float32) - _expand(jnp.sqrt(1.0 - a_t), x) * eps) / _expand(jnp.sqrt(a_t), x)

    def step(
        self,
        pred: jax.Array,
        i: jax.Array,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        prev_sample: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """ddim_step at step index i (scalar or (batch,)); returns (x_next, log_prob, mean, std)."""
        t = jnp.asarray(self.timesteps)[i]
        return ddim_step(
            self._eps(pred, t, x),
            t,
            jnp.asarray(self.prev_timesteps)[i],
            x,
            self.alphas_cumprod,
            eta=stochastic_level(self.eta, i, self.sde_window),
            key=key,
            prev_sample=prev_sample,
            final_alpha_cumprod=self.final_alpha_cumprod,
        )
