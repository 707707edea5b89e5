"""Specification of reward mixing: weighted, optionally standardised components, aggregated on the rewards or
on the advantages, each logged beside the mix."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from slas_jax import grpo
from slas_jax.config import AdvantageConfig, load_config
from slas_jax.reward_mix import (
    RewardMix,
    component_advantages,
    component_metrics,
    mixed_rewards,
    prepared_components,
)

GROUP = 4
ADVANTAGE = AdvantageConfig(method="dance_grpo", adv_clip=None)
RNG = np.random.default_rng(0)
# Two components of very different scales, e.g. PickScore (~20) and CLIP score (~0.3).
SCORES = jnp.asarray(
    np.stack([20 + RNG.normal(size=8), 0.3 + 0.01 * RNG.normal(size=8)], axis=1), jnp.float32
)


def mix(aggregate="rewards", weights=(1.0, 2.0), normalize=(False, True)) -> RewardMix:
    return RewardMix(
        labels=("pick", "clip"), weights=weights, normalize=normalize, aggregate=aggregate, eps=1e-6
    )


def advantages_of(rewards):
    return grpo.advantages_from_rewards(rewards, group_size=GROUP, advantage=ADVANTAGE)


def test_the_mix_is_the_weighted_sum_of_the_prepared_components():
    scores = np.asarray(SCORES, np.float64)
    clip = scores[:, 1]
    standardised = (clip - clip.mean()) / (clip.std() + 1e-6)
    np.testing.assert_allclose(mixed_rewards(SCORES, mix()), scores[:, 0] + 2.0 * standardised, rtol=1e-5)
    prepared = np.asarray(prepared_components(SCORES, mix()))
    np.testing.assert_array_equal(prepared[:, 0], np.asarray(SCORES[:, 0]))
    assert abs(prepared[:, 1].mean()) < 1e-5 and abs(prepared[:, 1].std() - 1.0) < 1e-3


def test_a_failed_sample_stays_failed_without_spoiling_the_others_statistics():
    failed = SCORES.at[3, 1].set(jnp.nan)
    prepared = np.asarray(prepared_components(failed, mix()))
    assert np.isnan(prepared[3, 1])
    kept = np.delete(np.asarray(SCORES[:, 1], np.float64), 3)
    np.testing.assert_allclose(
        np.delete(prepared[:, 1], 3), (kept - kept.mean()) / (kept.std() + 1e-6), rtol=1e-4
    )
    assert np.isnan(np.asarray(mixed_rewards(failed, mix()))[3])
    assert np.isfinite(float(component_metrics(failed, mix())["reward/clip"]))


def test_aggregating_advantages_sums_each_components_weighted_advantages():
    advantages, stats = component_advantages(SCORES, mix("advantages"), advantages_of)
    prepared = prepared_components(SCORES, mix())
    want = advantages_of(prepared[:, 0])[0] + 2.0 * advantages_of(prepared[:, 1])[0]
    np.testing.assert_allclose(advantages, want, rtol=1e-6)
    assert advantages.shape == (2, GROUP) and float(stats["zero_std_fraction"]) == 0.0


def test_aggregating_advantages_drops_a_group_any_component_failed_in_all_components():
    failed = SCORES.at[1, 0].set(jnp.nan)
    drop = functools.partial(
        grpo.advantages_from_rewards, group_size=GROUP, advantage=ADVANTAGE, drop_nonfinite=True
    )
    advantages, stats = component_advantages(failed, mix("advantages"), drop)
    np.testing.assert_array_equal(advantages[0], 0.0)
    assert np.all(np.asarray(advantages[1]) != 0.0) and float(stats["dropped_groups"]) == 1.0


def test_scores_of_a_mix_log_every_component_beside_the_mixed_reward():
    def reward_fn(_frozen, images, _batch):
        return SCORES

    rewards, advantages, stats = grpo.score(
        reward_fn,
        {},
        jnp.zeros((8, 2, 2, 3)),
        {"x": jnp.zeros((2, 1))},
        group_size=GROUP,
        advantage=ADVANTAGE,
        mix=mix(),
    )
    np.testing.assert_allclose(rewards, mixed_rewards(SCORES, mix()), rtol=1e-6)
    np.testing.assert_allclose(advantages, advantages_of(rewards)[0], rtol=1e-6)
    np.testing.assert_allclose(float(stats["reward/pick"]), float(SCORES[:, 0].mean()), rtol=1e-6)
    np.testing.assert_allclose(float(stats["reward/clip"]), float(SCORES[:, 1].mean()), rtol=1e-6)


def test_a_mix_of_one_unit_weighted_raw_component_is_the_single_reward():
    one = RewardMix(labels=("r",), weights=(1.0,), normalize=(False,), aggregate="rewards", eps=1e-6)
    images, batch = jnp.zeros((8, 2, 2, 3)), {"x": jnp.zeros((2, 1))}
    single = grpo.score(lambda *_: SCORES[:, 0], {}, images, batch, group_size=GROUP, advantage=ADVANTAGE)
    mixed = grpo.score(
        lambda *_: SCORES[:, :1], {}, images, batch, group_size=GROUP, advantage=ADVANTAGE, mix=one
    )
    np.testing.assert_array_equal(mixed[0], single[0])
    np.testing.assert_array_equal(mixed[1], single[1])


def test_the_mix_comes_from_the_reward_config():
    config = load_config(
        {
            "reward": {
                "name": "mix",
                "aggregate": "advantages",
                "components": {
                    "bright": {"name": "brightness", "weight": 0.5},
                    "again": {"name": "brightness", "normalize": True},
                },
            }
        }
    )
    assert RewardMix.from_config(config.reward, 1e-4) == RewardMix(
        labels=("bright", "again"),
        weights=(0.5, 1.0),
        normalize=(False, True),
        aggregate="advantages",
        eps=1e-4,
    )
    assert RewardMix.from_config(load_config({}).reward, 1e-4) is None


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"name": "mix"}, r"config\.reward\.components: name='mix' needs at least one component"),
        (
            {"name": "mix", "components": {"a": {"weight": 1.0}}},
            r"config\.reward\.components\.a\.name: set it",
        ),
        (
            {"name": "mix", "components": {"a": {"name": "nope"}}},
            r"components\.a\.name: unknown reward 'nope'",
        ),
        (
            {"name": "mix", "components": {"a": {"name": "brightness", "wieght": 1}}},
            r"components\.a\.wieght: unknown key",
        ),
        (
            {"name": "mix", "components": {"a": {"name": "brightness", "weight": "x"}}},
            r"a\.weight: must be a number",
        ),
        (
            {"name": "mix", "components": {"a": {"name": "brightness", "weight": float("nan")}}},
            r"a\.weight: must be finite",
        ),
        (
            {"name": "mix", "components": {"a": {"name": "brightness", "options": {"k": 1}}}},
            r"a\.options\.k: unknown option",
        ),
        (
            {"name": "mix", "components": {"a.b": {"name": "brightness"}}},
            r"components\.a\.b: labels are letters",
        ),
        (
            {"name": "mix", "options": {"k": 1}, "components": {"a": {"name": "brightness"}}},
            r"reward\.options: a mix",
        ),
        (
            {"components": {"a": {"name": "brightness"}}},
            r"config\.reward\.components: apply to name='mix' only",
        ),
        ({"aggregate": "advantages"}, r"config\.reward\.aggregate: applies to name='mix' only"),
        (
            {"name": "mix", "aggregate": "sum", "components": {"a": {"name": "brightness"}}},
            r"config\.reward\.aggregate",
        ),
    ],
)
def test_a_bad_mix_is_one_line_naming_its_field(reward, message):
    from slas_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config({"reward": reward})
