"""Specification of when a run evaluates fixed sets, of the evaluation settings for held-out rewards, and of
the gain their hacking gap compares."""

import pytest

from slas_jax.config import load_config
from slas_jax.errors import ConfigError
from slas_jax.evaluate import gain
from slas_jax.evaluate.fixed_sets import evaluates
from slas_jax.rewards import Reward, build_reward

SETS = {"fixed": {"name": "brightness"}}


def test_gain_is_the_move_from_the_first_evaluation_in_units_of_its_spread():
    assert gain(0.7, (0.5, 0.1)) == pytest.approx(2.0)
    assert gain(0.5, (0.5, 0.0)) == 0.0


def test_held_out_rewards_are_checked_like_the_training_reward():
    config = load_config({"eval": {"sets": SETS, "rewards": {"bright": {"name": "brightness"}}}})
    assert dict(config.eval.rewards) == {"bright": {"name": "brightness"}}


@pytest.mark.parametrize(
    ("eval_section", "message"),
    [
        ({"sets": SETS, "rewards": {"a": {}}}, r"config\.eval\.rewards\.a: needs a reward name"),
        (
            {"sets": SETS, "rewards": {"a": {"name": "nope"}}},
            r"config\.eval\.rewards\.a\.name: unknown reward",
        ),
        (
            {"sets": SETS, "rewards": {"a": {"name": "brightness", "weight": 1}}},
            r"rewards\.a: unknown key weight",
        ),
        (
            {"sets": SETS, "rewards": {"a": {"name": "brightness", "options": {"x": 1}}}},
            r"a\.options\.x: unknown",
        ),
        (
            {"sets": SETS, "rewards": {"gap": {"name": "brightness"}}},
            r"config\.eval\.rewards\.gap: labels are",
        ),
        (
            {"sets": SETS, "rewards": {"a-b": {"name": "brightness"}}},
            r"config\.eval\.rewards\.a-b: labels are",
        ),
    ],
)
def test_a_bad_held_out_reward_is_one_line_naming_its_field(eval_section, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"eval": eval_section})


@pytest.mark.parametrize(
    ("sections", "host_reward", "expected"),
    [
        ({}, False, False),  # a testbed run with nothing to evaluate, as the brightness smoke task
        ({"eval": {"scorer": "shapes"}}, False, True),
        ({"eval": {"sets": SETS}}, False, True),
        ({"eval": {"rewards": {"a": {"name": "brightness"}}}}, False, True),  # scored on the training prompts
        (
            {"model": {"family": "unet", "checkpoint": "/data/sd14"}},
            False,
            True,
        ),  # SD / FLUX: always a report
        (
            {"model": {"family": "unet", "checkpoint": "/data/sd14"}},
            True,
            False,
        ),  # a host reward cannot score it
    ],
)
def test_a_run_evaluates_when_something_is_configured_and_every_diffusers_run_on_a_jax_reward(
    sections, host_reward, expected
):
    reward = Reward(fn=None, host=lambda *_: None) if host_reward else build_reward("brightness", {})
    assert evaluates(load_config(sections), reward) is expected
