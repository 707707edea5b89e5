"""Stochastic samplers with log-probabilities: every step can draw a transition or re-score a stored one.

A sampler is addressed by step index (0 = noisiest) and exposes ``num_steps``, ``model_time(i)`` (what the
denoiser is conditioned on) and ``step(pred, i, x, *, key=None, prev_sample=None) -> (x_next, log_prob,
mean, std)``; log_prob is float32, averaged over non-batch dimensions. ``predict_x0(pred, i, x)`` is the
model's clean-sample estimate (what DanceGRPO decodes after the last step).

:data:`SAMPLERS` names the samplers ``config.sampler.name`` chooses from. Each entry states the model family it
samples for and builds the sampler from that family's schedule (:class:`DiffusionSchedule` for "unet",
:class:`FlowSchedule` for "flux"), which the pipeline reads from the checkpoint's scheduler, and the run's
:class:`~slas_jax.config.SamplerConfig`; a plugin (``slas_jax.registry``) registers more with
:func:`register_sampler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import jax

from slas_jax.registry import Registry
from slas_jax.samplers.ddim import (
    DDIMSampler,
    DiffusionSchedule,
    ddim_step,
    ddim_timesteps,
    scaled_linear_alphas_cumprod,
)
from slas_jax.samplers.flow import FlowSampler, FlowSchedule, dance_flow_step, flow_sde_step, shifted_sigmas

if TYPE_CHECKING:
    from slas_jax.config import SamplerConfig


class Sampler(Protocol):
    """The interface the rollout and the policy loss use."""

    sde_window: tuple[int, int] | None
    """The step indices [start, end) that draw noise, the others deterministic; None: every step draws."""

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


SamplerBuilder = Callable[[Any, "SamplerConfig"], Sampler]
"""(the model family's schedule, the run's sampler settings) -> Sampler."""


@dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler: the model family whose schedule it takes, and its builder."""

    family: Literal["unet", "flux"]
    build: SamplerBuilder


SAMPLERS: Registry[SamplerEntry] = Registry("sampler", "sampler.name")


def register_sampler(
    name: str, family: Literal["unet", "flux"]
) -> Callable[[SamplerBuilder], SamplerBuilder]:
    """Decorator registering a builder under ``name`` for ``family``'s schedule; returns the builder."""

    def add(build: SamplerBuilder) -> SamplerBuilder:
        SAMPLERS.register(name)(SamplerEntry(family, build))
        return build

    return add


@register_sampler("ddim", "unet")
def build_ddim(schedule: DiffusionSchedule, config: SamplerConfig) -> DDIMSampler:
    """DDIM with eta = ``config.noise_level`` over a UNet's schedule (DDPO, DanceGRPO SD)."""
    return DDIMSampler(
        alphas_cumprod=schedule.alphas_cumprod,
        timesteps=schedule.timesteps,
        prev_timesteps=schedule.prev_timesteps,
        eta=config.noise_level,
        final_alpha_cumprod=schedule.final_alpha_cumprod,
        prediction_type=schedule.prediction_type,
        sde_window=config.sde_window,
    )


@register_sampler("flow_sde", "flux")
def build_flow_sde(schedule: FlowSchedule, config: SamplerConfig) -> FlowSampler:
    """Flow-GRPO's SDE with noise level a = ``config.noise_level`` over a flow model's sigmas."""
    return FlowSampler(
        sigmas=schedule.sigmas, noise_level=config.noise_level, form="flow_grpo", sde_window=config.sde_window
    )


@register_sampler("dance_flow", "flux")
def build_dance_flow(schedule: FlowSchedule, config: SamplerConfig) -> FlowSampler:
    """DanceGRPO's FLUX step with eta = ``config.noise_level`` over a flow model's sigmas."""
    return FlowSampler(
        sigmas=schedule.sigmas, noise_level=config.noise_level, form="dance", sde_window=config.sde_window
    )


__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DiffusionSchedule",
    "FlowSampler",
    "FlowSchedule",
    "Sampler",
    "SamplerBuilder",
    "SamplerEntry",
    "dance_flow_step",
    "ddim_step",
    "ddim_timesteps",
    "flow_sde_step",
    "register_sampler",
    "scaled_linear_alphas_cumprod",
    "shifted_sigmas",
]
