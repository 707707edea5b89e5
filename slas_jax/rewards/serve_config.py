"""The reward server's default ``--config`` (``python -m slas_jax.rewards.serve``): the reward section at
its defaults, so ``--reward NAME`` alone serves a reward whose options all have defaults."""

import ml_collections

from slas_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"reward": defaults().reward})
