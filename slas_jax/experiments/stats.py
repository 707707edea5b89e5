"""The report's statistics, pure numpy / scipy: bootstrap intervals over seeds (and over evaluation
prompts, when per-prompt scores exist), the smallest effect a design can detect, steps to a target.

Values come as arrays with seeds on axis 0: ``(seeds,)`` for one number per run, or ``(seeds, prompts)``
for per-prompt scores of the same fixed prompts in every run. The estimate is always the mean over seeds
of the mean over prompts. The two-level bootstrap draws seeds with replacement and, independently, prompt
indices with replacement (one draw of prompts per replicate, shared by every seed and by both arms of a
difference: the prompts are the same, so the comparison is paired over them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Interval:
    """An estimate with its percentile bootstrap interval (``level``, e.g. 0.95)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        return values[:, None]
    if values.ndim != 2:
        raise ValueError(f"values must be (seeds,) or (seeds, prompts), got shape {values.shape}")
    return values


def _replicates(values: np.ndarray, seeds: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """(B,) bootstrap means: values (S, P), seeds (B, S) and prompts (B, P) indices."""
    picked = values[seeds[:, :, None], prompts[:, None, :]]
    return picked.mean(axis=(1, 2))


def _draws(rng: np.random.Generator, n_boot: int, count: int) -> np.ndarray:
    return rng.integers(0, count, size=(n_boot, count))


def _interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def bootstrap_mean(values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean over seeds (of the mean over prompts) of ``values`` (seeds,) or (seeds, prompts) float, with the
    two-level percentile bootstrap interval."""
    values = _as_2d(values)
    rng = np.random.default_rng(seed)
    seeds = _draws(rng, n_boot, values.shape[0])
    prompts = _draws(rng, n_boot, values.shape[1])
    return _interval(values.mean(), _replicates(values, seeds, prompts), level)


def bootstrap_difference(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """mean(a) - mean(b) for two arms (their seeds independent runs, their prompts the same fixed set):
    ``a`` (seeds_a,) or (seeds_a, prompts), ``b`` likewise with the same number of prompts."""
    return bootstrap_contrast((a, b), (1.0, -1.0), n_boot=n_boot, level=level, seed=seed)


def bootstrap_contrast(
    arms: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """sum_i weights[i] * mean(arms[i]) with its bootstrap interval, each arm's seeds resampled on their own
    and the prompts (one fixed set, the same in every arm) together: each arm (seeds_i,) or (seeds_i,
    prompts). E.g. weights (1, -1, -1, 1) over (treatment, control) at two sizes: how the effect changes."""
    arms = [_as_2d(arm) for arm in arms]
    if len({arm.shape[1] for arm in arms}) != 1:
        raise ValueError(f"every arm needs the same prompts, got {[arm.shape[1] for arm in arms]}")
    rng = np.random.default_rng(seed)
    prompts = _draws(rng, n_boot, arms[0].shape[1])
    replicates = sum(
        w * _replicates(arm, _draws(rng, n_boot, arm.shape[0]), prompts)
        for w, arm in zip(weights, arms, strict=True)
    )
    estimate = sum(w * arm.mean() for w, arm in zip(weights, arms, strict=True))
    return _interval(float(estimate), replicates, level)


def bootstrap_curve(
    curves: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step, the mean over seeds of ``curves`` (seeds, steps) and its bootstrap band over seeds:
    (mean, low, high), each (steps,)."""
    curves = np.asarray(curves, np.float64)
    rng = np.random.default_rng(seed)
    seeds = _draws(rng, n_boot, curves.shape[0])
    replicates = curves[seeds].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
    return curves.mean(axis=0), low, high


def pooled_std(a: np.ndarray, b: np.ndarray) -> float:
    """The pooled seed-to-seed standard deviation of two arms' per-seed values (seeds,) (ddof 1); NaN when
    neither arm has two seeds."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dof = len(a) + len(b) - 2
    if dof < 1:
        return float("nan")
    return float(np.sqrt((np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2)) / dof))


def power(effect: float, std: float, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test (equal variances) to detect a true difference ``effect``
    between arms of ``n_a`` and ``n_b`` seeds whose seed-to-seed standard deviation is ``std``."""
    dof = n_a + n_b - 2
    critical = scipy_stats.t.ppf(1 - alpha / 2, dof)
    noncentrality = effect / (std * np.sqrt(1 / n_a + 1 / n_b))
    # Each tail as an upper tail (P(T < -c | nc) = P(T > c | -nc)): scipy's lower tail of a far-off
    # noncentral t is NaN where this is a clean 0.
    return float(
        scipy_stats.nct.sf(critical, dof, noncentrality) + scipy_stats.nct.sf(critical, dof, -noncentrality)
    )


def minimum_detectable_effect(
    std: float, n_a: int, n_b: int, *, alpha: float = 0.05, target_power: float = 0.8
) -> float:
    """The smallest true difference the two-sided t-test over seeds detects with ``target_power`` at level
    ``alpha``, for arms of ``n_a`` and ``n_b`` seeds with seed-to-seed standard deviation ``std``; NaN when
    it cannot be computed (fewer than 3 seeds in all, or no spread measured)."""
    if n_a + n_b < 3 or not np.isfinite(std) or std <= 0:
        return float("nan")
    scale = std * np.sqrt(1 / n_a + 1 / n_b)
    upper = scale
    while power(upper, std, n_a, n_b, alpha) < target_power:  # few degrees of freedom need many SEs
        upper *= 2
    return float(
        optimize.brentq(lambda d: power(d, std, n_a, n_b, alpha) - target_power, 1e-9 * scale, upper)
    )


def moving_average(curve: np.ndarray, window: int) -> np.ndarray:
    """(steps,) -> (steps,): the mean of each step's last ``window`` values (fewer at the start)."""
    curve = np.asarray(curve, np.float64)
    sums = np.cumsum(np.concatenate([[0.0], curve]))
    ends = np.arange(1, len(curve) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def steps_to_target(curve: np.ndarray, target: float, window: int = 1) -> int | None:
    """The number of steps after which the ``window``-step moving average of ``curve`` (steps,) first
    reaches ``target`` (so 1 when step 0 already does), None when it never does."""
    reached = np.flatnonzero(moving_average(curve, window) >= target)
    return int(reached[0]) + 1 if len(reached) else None


Direction = Literal["greater", "less"]


def verdict(interval: Interval | None, direction: Direction) -> str:
    """ "supported" when the interval of (treatment - control) excludes 0 on the claimed side
    (``greater``: above 0), "contradicted" when it excludes 0 on the other side, "inconclusive" when it holds
    0, "not tested" without an interval."""
    if interval is None or not np.isfinite(interval.estimate):
        return "not tested"
    if not interval.excludes_zero():
        return "inconclusive"
    above = interval.low > 0
    return "supported" if above == (direction == "greater") else "contradicted"
