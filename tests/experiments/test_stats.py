"""The report's statistics on synthetic data whose answers are known."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from slas_jax.experiments import stats


def test_bootstrap_mean_of_seeds_matches_the_normal_interval():
    """For many seeds of a normal quantity the percentile interval is mean +- 1.96 sd / sqrt(n)."""
    values = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    interval = stats.bootstrap_mean(values, n_boot=4000)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert interval.estimate == pytest.approx(values.mean())
    assert interval.low == pytest.approx(values.mean() - half, abs=0.05)
    assert interval.high == pytest.approx(values.mean() + half, abs=0.05)


def test_two_level_bootstrap_adds_the_prompts_spread():
    """Seeds that agree but prompts that differ: the interval is the prompts' (sd / sqrt(prompts)), and
    it is zero-width for a seed-only bootstrap of the same seed means."""
    prompts = np.random.default_rng(1).normal(0.0, 1.0, size=300)
    values = np.tile(prompts, (4, 1))  # 4 seeds, identical
    interval = stats.bootstrap_mean(values, n_boot=4000)
    half = 1.96 * prompts.std(ddof=1) / np.sqrt(len(prompts))
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.1)
    seeds_only = stats.bootstrap_mean(values.mean(axis=1))
    assert seeds_only.high - seeds_only.low == pytest.approx(0.0, abs=1e-12)


def test_difference_of_paired_prompts_cancels_the_prompts():
    """Arms that differ by a constant on the same prompts: the prompts' spread cancels (paired), the
    interval is the constant."""
    prompts = np.random.default_rng(2).normal(0.0, 1.0, size=64)
    a, b = np.tile(prompts + 0.25, (3, 1)), np.tile(prompts, (3, 1))
    interval = stats.bootstrap_difference(a, b)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.25, 0.25, 0.25))
    assert stats.verdict(interval, "greater") == "supported"
    assert stats.verdict(interval, "less") == "contradicted"


def test_difference_interval_covers_the_true_effect_at_its_level():
    """Coverage over repeated experiments of 8 seeds per arm is close to the nominal 95% (the percentile
    bootstrap runs a little narrow with few seeds)."""
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(300):
        a, b = rng.normal(1.0, 1.0, size=8), rng.normal(0.0, 1.0, size=8)
        interval = stats.bootstrap_difference(a, b, n_boot=500, seed=i)
        covered += interval.low <= 1.0 <= interval.high
    assert 0.86 <= covered / 300 <= 0.98


def test_minimum_detectable_effect_has_the_power_it_names():
    """At the MDE the t-test over seeds rejects in 80% of simulated experiments; for many seeds it is the
    normal formula (z_0.975 + z_0.8) sd sqrt(2/n)."""
    sd, n = 0.05, 5
    mde = stats.minimum_detectable_effect(sd, n, n)
    assert stats.power(mde, sd, n, n) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(4)
    a = rng.normal(mde, sd, size=(20000, n))
    b = rng.normal(0.0, sd, size=(20000, n))
    rejected = scipy_stats.ttest_ind(a, b, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)
    large = stats.minimum_detectable_effect(1.0, 2000, 2000)
    assert large == pytest.approx((1.959964 + 0.841621) * np.sqrt(2 / 2000), rel=1e-3)
    assert stats.minimum_detectable_effect(1.0, 2, 1) > 10  # one degree of freedom: a huge effect
    assert np.isnan(stats.minimum_detectable_effect(1.0, 1, 1))
    assert np.isnan(stats.minimum_detectable_effect(0.0, 3, 3))


def test_pooled_std():
    a, b = np.array([1.0, 3.0]), np.array([10.0, 12.0, 14.0])
    assert stats.pooled_std(a, b) == pytest.approx(np.sqrt((2 + 8) / 3))


def test_steps_to_target_reads_the_moving_average():
    curve = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    assert stats.steps_to_target(curve, 1.0) == 3  # the single step 2 reaches it
    assert stats.steps_to_target(curve, 1.0, window=3) == 7  # three in a row only at the end
    assert stats.steps_to_target(curve, 2.0) is None
    np.testing.assert_allclose(stats.moving_average(np.array([2.0, 4.0, 6.0]), 2), [2.0, 3.0, 5.0])


def test_curve_band_is_zero_for_equal_seeds_and_wraps_the_mean():
    curves = np.tile(np.linspace(0, 1, 5), (3, 1))
    mean, low, high = stats.bootstrap_curve(curves)
    np.testing.assert_allclose([mean, low, high], [curves[0]] * 3)
    noisy = curves + np.random.default_rng(5).normal(0, 0.1, size=curves.shape)
    mean, low, high = stats.bootstrap_curve(noisy)
    assert np.all(low <= mean) and np.all(mean <= high) and np.all(high > low)


def test_verdicts():
    assert stats.verdict(stats.Interval(-0.1, -0.3, 0.2), "greater") == "inconclusive"
    assert stats.verdict(stats.Interval(-3.0, -5.0, -1.0), "less") == "supported"
    assert stats.verdict(None, "less") == "not tested"
