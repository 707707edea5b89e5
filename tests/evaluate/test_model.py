"""Where a benchmark's weights come from: the config's base model, a policy folder, a run's train state."""

import runpy

import jax
import numpy as np
import pytest
from evaluate_runner import CONFIG, POLICY

from slas_jax import grpo
from slas_jax.checkpoint import Checkpointer
from slas_jax.config import ConfigError, load_config
from slas_jax.evaluate.model import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config():
    return load_config(runpy.run_path(CONFIG)["get_config"]())


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_run_dir_samples_the_checkpointed_policy(config, tmp_path):
    base = load_model(config)
    assert base.source["kind"] == "base" and base.source["init_checkpoint"] == "checkpoints/shapes_flow"
    trained = jax.tree.map(lambda x: x + 0.5, base.bundle.params)
    state = grpo.init_train_state(trained, base.bundle.frozen, grpo.make_optimizer(config), config)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(state.replace(step=np.asarray(7, np.int32)), {"step": 7})
    checkpointer.close()
    run = load_model(config, run_dir=str(tmp_path))
    assert (run.source["kind"], run.source["step"]) == ("run", 7)
    for got, want in zip(leaves(run.bundle.params), leaves(trained), strict=True):
        np.testing.assert_array_equal(got, want)
    policy = load_model(config, policy=POLICY)
    for got, want in zip(leaves(policy.bundle.params), leaves(base.bundle.params), strict=True):
        np.testing.assert_array_equal(got, want)  # the same weights folder, read as a policy
    assert policy.config.sampler == config.sampler


def test_one_source_of_weights(config, tmp_path):
    with pytest.raises(ConfigError, match="pass one of them"):
        load_model(config, policy=POLICY, run_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="checkpoint_every"):
        load_model(config, run_dir=str(tmp_path))
