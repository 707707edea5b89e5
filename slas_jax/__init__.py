"""slas-jax: GRPO post-training of text-to-image models in JAX with Super-Linear Advantage Shaping.

The public API, importable from here (each name is loaded from its module on first use, so ``import
slas_jax`` stays cheap and submodules import each other freely)::

    from slas_jax import compute_advantages, ddim_step, sample_trajectories, make_train_step
"""

import importlib
from typing import Any

_EXPORTS = {
    "compute_advantages": "slas_jax.advantages",
    "compute_advantages_with_stats": "slas_jax.advantages",
    "ADVANTAGE_METHODS": "slas_jax.advantages",
    "ddim_step": "slas_jax.samplers",
    "flow_sde_step": "slas_jax.samplers",
    "dance_flow_step": "slas_jax.samplers",
    "SAMPLERS": "slas_jax.samplers",
    "sample_trajectories": "slas_jax.rollout",
    "policy_loss": "slas_jax.losses",
    "make_train_step": "slas_jax.grpo",
    "jit_train_step": "slas_jax.grpo",
    "make_generate": "slas_jax.grpo",
    "Config": "slas_jax.config",
    "load_config": "slas_jax.config",
    "defaults": "slas_jax.config",
    "build_pipeline": "slas_jax.pipelines",
    "build_reward": "slas_jax.rewards",
    "REWARDS": "slas_jax.rewards",
    "Reward": "slas_jax.rewards",
    "SOURCES": "slas_jax.data",
    "build_prompt_source": "slas_jax.data",
    "SCORERS": "slas_jax.scorers",
    "export_policy": "slas_jax.weights",
    "load_policy": "slas_jax.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slas_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
