"""Which transitions a GRPO step trains: ``select_timesteps`` draws, per sample, a random subset of the steps
left after ``loss.exclude_first_steps`` and ``loss.exclude_last_steps``."""

import jax
import numpy as np
import pytest

from slas_jax.config import ConfigError, load_config
from slas_jax.losses import select_timesteps


@pytest.mark.parametrize(
    ("first", "last", "fraction", "k"), [(0, 0, 1.0, 8), (0, 1, 0.5, 4), (3, 1, 1.0, 4), (2, 2, 0.3, 1)]
)
def test_each_sample_trains_distinct_steps_inside_the_window(first, last, fraction, k):
    index = np.asarray(
        select_timesteps(
            jax.random.PRNGKey(0), 64, 8, fraction=fraction, exclude_first=first, exclude_last=last
        )
    )
    assert index.shape == (64, k) and index.dtype == np.int32
    assert index.min() >= first and index.max() <= 8 - last - 1
    assert all(len(set(row)) == k for row in index)
    # Every step of the window is drawn by some sample, and rows differ (a per-sample draw, not one subset).
    assert set(index.ravel()) == set(range(first, 8 - last))
    assert len({tuple(row) for row in index}) > 1


def test_excluded_steps_must_leave_a_trainable_one():
    with pytest.raises(
        ConfigError, match=r"loss\.exclude_last_steps: plus loss\.exclude_first_steps must be <"
    ):
        load_config(
            {"sampler": {"num_steps": 4}, "loss": {"exclude_first_steps": 3, "exclude_last_steps": 1}}
        )
    load_config({"sampler": {"num_steps": 4}, "loss": {"exclude_first_steps": 2, "exclude_last_steps": 1}})
