"""Reward models, one file per family, registered by name in ``REWARDS``."""

from slas_jax.rewards import brightness, clip_score, proxy, shapes
from slas_jax.rewards.registry import REWARDS, Reward, build_reward, register

__all__ = ["REWARDS", "Reward", "brightness", "build_reward", "clip_score", "proxy", "register", "shapes"]
