"""Specification of the advantage methods (DanceGRPO, mean-only, Flow-GRPO, SLAS)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from slas_jax.advantages import ADVANTAGE_METHODS, compute_advantages, compute_advantages_with_stats

finite = st.floats(-10, 10, allow_nan=False, width=32)
reward_arrays = st.tuples(st.integers(1, 5), st.integers(2, 8)).flatmap(
    lambda shape: arrays(np.float32, shape, elements=finite)
)


def test_dance_grpo_matches_unbiased_group_normalisation():
    r = np.array([[1.0, 2.0, 4.0, 7.0], [0.5, 0.1, 0.2, 0.9]], np.float32)
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(compute_advantages(r, method="dance_grpo"), expected, rtol=1e-5)


def test_dance_grpo_clips():
    r = np.array([[0.0] * 15 + [1.0]], np.float32)
    adv = compute_advantages(r, method="dance_grpo", adv_clip=2.0)
    assert float(adv.max()) == 2.0


def test_mean_only_is_centred_reward():
    r = np.array([[1.0, 3.0], [2.0, 2.5]], np.float32)
    np.testing.assert_allclose(compute_advantages(r, method="mean_only"), [[-1, 1], [-0.25, 0.25]])


def test_flow_grpo_uses_population_std_of_whole_batch():
    r = np.array([[1.0, 2.0], [5.0, 9.0]], np.float32)
    expected = (r - r.mean(1, keepdims=True)) / (r.std() + 1e-6)
    np.testing.assert_allclose(compute_advantages(r, method="flow_grpo"), expected, rtol=1e-6)


def test_slas_formula_default_order():
    r = np.array([[0.1, 0.5, 0.9], [0.2, 0.2, 0.8]], np.float32)
    d = r - r.mean(1, keepdims=True)
    shaped = np.sign(d) * np.abs(d) ** 2.0
    np.testing.assert_allclose(
        compute_advantages(r, method="slas", gamma=1.0), shaped / (shaped.std() + 1e-6), rtol=1e-5
    )


def test_slas_normalize_before_option():
    r = np.array([[0.1, 0.5, 0.9], [0.2, 0.2, 0.8]], np.float32)
    d = r - r.mean(1, keepdims=True)
    e = d / (d.std() + 1e-6)
    np.testing.assert_allclose(
        compute_advantages(r, method="slas", gamma=0.5, slas_normalize="before"),
        np.sign(e) * np.abs(e) ** 1.5,
        rtol=1e-5,
    )


@settings(max_examples=60, deadline=None)
@given(reward_arrays, st.floats(0.0, 3.0))
def test_slas_gamma_zero_is_mean_only_over_batch_std(r, _):
    mean_only = np.asarray(compute_advantages(r, method="mean_only"))
    np.testing.assert_allclose(
        compute_advantages(r, method="slas", gamma=0.0), mean_only / (mean_only.std() + 1e-6), atol=1e-4
    )


@settings(max_examples=60, deadline=None)
@given(reward_arrays, st.floats(0.0, 3.0))
def test_slas_preserves_sign(r, gamma):
    d = r - r.mean(1, keepdims=True)
    adv = np.asarray(compute_advantages(r, method="slas", gamma=gamma))
    clear = np.abs(d) > 1e-3
    assert np.all(np.sign(adv[clear]) == np.sign(d[clear]))


def test_slas_is_super_linear_ratio_grows_with_gamma():
    r = np.array([[0.0, 0.1, 0.4, 1.0]], np.float32)
    ratios = []
    for gamma in [0.0, 0.5, 1.0, 2.0]:
        adv = np.asarray(compute_advantages(r, method="slas", gamma=gamma))[0]
        ratios.append(abs(adv[3]) / abs(adv[2]))
    assert all(b > a for a, b in itertools.pairwise(ratios)), ratios


@pytest.mark.parametrize("method", ["dance_grpo", "slas", "flow_grpo", "flow_grpo_per_prompt"])
@settings(max_examples=40, deadline=None)
@given(r=reward_arrays, scale=st.floats(0.1, 100.0))
def test_scale_invariance(method, r, scale):
    r = r + np.linspace(0, 1, r.size, dtype=np.float32).reshape(r.shape)
    base = np.asarray(compute_advantages(r, method=method, eps=1e-12))
    scaled = np.asarray(compute_advantages(r * np.float32(scale), method=method, eps=1e-12))
    np.testing.assert_allclose(scaled, base, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("method", sorted(ADVANTAGE_METHODS))
def test_all_equal_group_gives_exact_zeros(method):
    r = np.array([[0.3] * 4, [0.1, 0.2, 0.3, 0.9]], np.float32)
    adv, stats = compute_advantages_with_stats(r, method=method, adv_clip=5.0)
    assert np.all(np.isfinite(adv))
    assert np.all(np.asarray(adv)[0] == 0.0)
    assert float(stats["zero_std_fraction"]) == 0.5


@pytest.mark.parametrize("method", sorted(ADVANTAGE_METHODS))
@pytest.mark.parametrize("value", [0.3, 3.8787563, 1e-7], ids=str)
def test_an_all_equal_group_whose_mean_rounds_gets_exact_zeros(method, value):
    """12 x 0.3 averages to 0.3 + rounding in float32; divided by a std of the same size the residue became
    O(1) advantages for dance_grpo before the centring treated ties exactly."""
    r = np.stack([np.full(12, value, np.float32), np.linspace(0, 1, 12, dtype=np.float32)])
    adv = np.asarray(compute_advantages(r, method=method, eps=1e-8))
    assert np.all(adv[0] == 0.0), adv[0]
    assert np.all(np.isfinite(adv)) and np.any(adv[1] != 0.0)


def test_flow_grpo_per_prompt_uses_each_groups_population_std():
    r = np.array([[1.0, 2.0, 4.0], [5.0, 9.0, 9.5]], np.float32)
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(
        compute_advantages(r, method="flow_grpo_per_prompt", eps=1e-4), expected, rtol=1e-6
    )


@pytest.mark.parametrize("method", sorted(ADVANTAGE_METHODS))
def test_all_equal_batch_gives_zeros_not_nan(method):
    adv = compute_advantages(jnp.full((3, 4), 2.0), method=method)
    assert np.all(np.asarray(adv) == 0.0)


def test_jit_and_stats():
    fn = jax.jit(lambda r: compute_advantages_with_stats(r, method="slas", gamma=1.0))
    adv, stats = fn(jnp.arange(8.0).reshape(2, 4))
    assert adv.shape == (2, 4) and stats["group_mean"].shape == (2,) and stats["batch_std"].shape == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "ppo"}, "unknown advantage method"),
        ({"method": "slas", "gamma": -1.0}, "gamma must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(jnp.ones((2, 4)), **kwargs)


def test_group_size_one_rejected():
    with pytest.raises(ValueError, match="group_size >= 2"):
        compute_advantages(jnp.ones((4, 1)), method="slas")
