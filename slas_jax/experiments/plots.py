"""The report's figures: curves over steps with bootstrap bands over seeds, one line per cell group, and
the per-category ground truth of the final benchmark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from slas_jax.data.geneval import TAGS
from slas_jax.experiments import stats


def _band(ax, steps: np.ndarray, curves: np.ndarray, label: str) -> None:
    """Mean over seeds of ``curves`` (seeds, points) at ``steps`` with its 95% band."""
    keep = np.all(np.isfinite(curves), axis=0)
    if not keep.any():
        return
    mean, low, high = stats.bootstrap_curve(curves[:, keep])
    (line,) = ax.plot(steps[keep], mean, label=label, lw=1.2)
    ax.fill_between(steps[keep], low, high, color=line.get_color(), alpha=0.2)


def _series(members: Sequence[Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, (seeds, points)) of an evaluated key, when every seed evaluated at the same steps."""
    pairs = [run.series(key) for run in members]
    if not pairs or not len(pairs[0][0]) or any(not np.array_equal(p[0], pairs[0][0]) for p in pairs):
        return None
    return pairs[0][0], np.stack([p[1] for p in pairs])


def save_curves(path: Path, groups: Mapping[str, Sequence[Any]], measures: Any) -> None:
    """Three panels: the rollout training reward (moving average), held-out ground truth at each
    evaluation, and the proxy-truth gap over steps; a panel without data says so."""
    settings = measures.s
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    held_key = f"{settings['held_out_set']}/{settings['truth_metric']}"
    for name, members in groups.items():
        rewards = np.stack(
            [stats.moving_average(run.curve("reward_mean"), settings["window"]) for run in members]
        )
        _band(axes[0], np.arange(1, rewards.shape[1] + 1), rewards, name)
        held = _series(members, held_key)
        if held is not None:
            _band(axes[1], *held, name)
        gaps = [measures.gap(run) for run in members]
        if all(np.array_equal(g[0], gaps[0][0]) for g in gaps):
            _band(axes[2], gaps[0][0], np.stack([g[1] for g in gaps]), name)
    titles = (
        f"training reward (rollouts, {settings['window']}-step moving average)",
        f"held-out ground truth ({held_key})",
        "proxy - truth gap (hacking measure)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not measured in this grid", ha="center", va="center", transform=ax.transAxes)
    axes[-1].set_xlabel("GRPO steps done")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_categories(path: Path, groups: Mapping[str, Sequence[Any]], settings: Mapping[str, Any]) -> bool:
    """Bars of the final ground truth per category and group (mean over seeds and prompts, 95% interval),
    one panel per fixed set; False (nothing written) when no group has per-prompt scores."""
    metric = settings["truth_metric"]
    names = [settings["train_set"], settings["held_out_set"]]
    usable = {
        name: members
        for name, members in groups.items()
        if all(n in run.per_prompt for run in members for n in names)
    }
    if not usable:
        return False
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 3.5 * len(names)))
    width = 0.8 / len(usable)
    for ax, set_name in zip(np.atleast_1d(axes), names, strict=True):
        tags = np.unique(next(iter(usable.values()))[0].per_prompt[set_name]["tags"])
        for i, (name, members) in enumerate(usable.items()):
            means, errors = [], []
            for t in tags:
                chosen = members[0].per_prompt[set_name]["tags"] == t
                values = np.stack([run.per_prompt[set_name]["truth"][metric][chosen] for run in members])
                interval = stats.bootstrap_mean(values, n_boot=500)
                means.append(interval.estimate)
                errors.append((interval.estimate - interval.low, interval.high - interval.estimate))
            ax.bar(
                np.arange(len(tags)) + i * width, means, width, yerr=np.array(errors).T, label=name, capsize=2
            )
        ax.set_xticks(np.arange(len(tags)) + 0.4 - width / 2)
        ax.set_xticklabels([TAGS[int(t)] if int(t) < len(TAGS) else str(t) for t in tags], fontsize=8)
        ax.set_title(f"{set_name}: final ground truth ({metric}) per category", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
