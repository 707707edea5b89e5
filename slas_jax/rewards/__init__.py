"""Reward models, one file per family, registered by name in ``REWARDS`` (plugins add their own)."""

from slas_jax.rewards import clip_score, hps, remote
from slas_jax.rewards.registry import REWARDS, Reward, build_reward, check_reads, register

__all__ = ["REWARDS", "Reward", "build_reward", "check_reads", "clip_score", "hps", "register", "remote"]
