"""Run reports: captioned sample grids, reward curves and the markdown summary of a run folder."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from slas_jax.config import Config

RUN_FILES = (
    "metrics.jsonl",
    "curves.png",
    "samples_before.png",
    "samples_after.png",
    "tensorboard",
    "checkpoints",
    "policy",
)
"""What the summary lists of a run folder, when there."""
GRID_SIDE = 128
"""Pixels of an image's longer side in a grid cell: small images are enlarged to it (nearest, by a whole
factor), images larger than twice it reduced to twice it."""


def _display_scale(side: int) -> float:
    """The factor an image of ``side`` pixels is shown at: 32 px -> 4, 128 -> 1, 512 -> 0.5."""
    if side <= GRID_SIDE:
        return float(max(1, GRID_SIDE // side))
    return min(1.0, 2 * GRID_SIDE / side)


def save_grid(rows: Sequence[tuple[str, Sequence[str], np.ndarray]], path: str | Path, title: str) -> None:
    """rows: (set name, prompts (n,), images (n, samples, h, w, 3) in [0, 1]); one captioned cell per prompt
    holding its samples stacked vertically, shown at :func:`_display_scale` (testbed 32 px images 4x,
    SD's 512 px halved)."""
    scale = _display_scale(max(max(images.shape[2:4]) for _, _, images in rows))
    cell_w = round(max(images.shape[3] for _, _, images in rows) * scale) + 8
    cell_h = round(max(images.shape[1] * images.shape[2] for _, _, images in rows) * scale) + 36
    width = max(len(prompts) for _, prompts, _ in rows) * cell_w + 8
    canvas = Image.new("RGB", (max(width, 320), 24 + len(rows) * (cell_h + 18)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black")
    for r, (name, prompts, images) in enumerate(rows):
        top = 24 + r * (cell_h + 18)
        draw.text((8, top), name, fill="gray")
        for c, prompt in enumerate(prompts):
            left = 8 + c * cell_w
            column = np.concatenate(list(images[c]), axis=0)
            pixels = (np.clip(column, 0, 1) * 255).astype(np.uint8)
            size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
            tile = Image.fromarray(pixels).resize(size, Image.NEAREST if scale >= 1 else Image.BOX)
            canvas.paste(tile, (left, top + 14))
            for line, text in enumerate(_wrap(prompt, (cell_w - 8) // 7)[:2]):
                draw.text((left, top + 16 + tile.height + 10 * line), text, fill="black")
    canvas.save(path)


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return [*lines, current]


def _fixed_set_line(ax, history, before, key: str, label: str) -> None:
    """A fixed-set metric: ``before`` at x = 0, the value measured after step i at x = i + 1."""
    points = [(0, before[key])] if key in before else []
    points += [(i + 1, h[key]) for i, h in enumerate(history) if key in h and not math.isnan(h[key])]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", linestyle="--", label=label)


def save_curves(
    history: Sequence[Mapping[str, float]],
    before: Mapping[str, float],
    path: str | Path,
    title: str,
    held_out: Sequence[str] = (),
) -> None:
    """Reward curves PNG over updates done: rollout metrics of step i sit at x = i (sampled after i
    updates), fixed-set metrics measured after step i at x = i + 1, and ``before`` (the first evaluation,
    which measured every fixed-set metric) at x = 0.

    The first panel holds the training reward on the rollouts, the ground truth of the rollouts, and per
    fixed set its ground-truth strict accuracy (a scorer's ``<set>/strict``) or, without a scorer, the
    training reward (``<set>/reward``); then one panel per held-out reward label (``<set>/<label>``, each on
    its own scale) and one of the hacking gaps (``<set>/gap/<label>``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = sorted(before)
    gaps = [k for k in fixed if "/gap/" in k]
    panels = 1 + len(held_out) + bool(gaps)
    fig, axes = plt.subplots(panels, 1, figsize=(7, 4 + 3 * (panels - 1)), dpi=110, squeeze=False)
    ax = axes[0, 0]
    steps = np.arange(len(history))
    ax.plot(steps, [h["reward_mean"] for h in history], label="training reward", color="tab:blue")
    for key, color in (("truth/partial", "tab:green"), ("truth/strict", "tab:olive")):
        if key in history[0]:
            ax.plot(
                steps,
                [h[key] for h in history],
                label=f"ground truth {key.split('/')[1]} (train samples)",
                color=color,
            )
    strict = [k for k in fixed if k.endswith("/strict")]
    for key in strict or [k for k in fixed if k.endswith("/reward")]:
        _fixed_set_line(ax, history, before, key, f"{key} (fixed prompts)")
    ax.set_ylabel("score")
    ax.set_title(title)
    named = [
        (f"held-out reward {label}", [k for k in fixed if k.endswith(f"/{label}") and k not in gaps])
        for label in held_out
    ]
    if gaps:
        named.append(("hacking gap (training reward gain - held-out gain)", gaps))
    for row, (ylabel, keys) in enumerate(named, start=1):
        for key in keys:
            _fixed_set_line(axes[row, 0], history, before, key, f"{key} (fixed prompts)")
        axes[row, 0].set_ylabel(ylabel, fontsize=8)
    for panel in axes[:, 0]:
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    axes[-1, 0].set_xlabel("GRPO updates done")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(
    path: str | Path,
    config: Config,
    history: Sequence[Mapping[str, float]],
    before: Mapping[str, float],
    after: Mapping[str, float],
    seconds: float,
) -> None:
    """A short markdown report: setup, before -> after table, files of the run folder."""
    first, last = history[0], history[-1]
    lines = [
        f"# GRPO run: {config.advantage.method} on {config.model.family}",
        "",
        f"- reward: `{config.reward.name}`, prompts: `{config.data.name}`, steps: {len(history)}, "
        f"prompts x group: {config.train.prompts_per_step} x {config.train.group_size}, wall time {seconds:.0f} s",
        f"- advantage: `{config.advantage.method}` (gamma {config.advantage.gamma}), clip range "
        f"{config.loss.clip_range}, lr {config.optim.learning_rate}",
        "",
        "| metric | before | after |",
        "| --- | --- | --- |",
        f"| training reward (rollout mean) | {first['reward_mean']:.4f} | {last['reward_mean']:.4f} |",
    ]
    for key in sorted(set(before) | set(after)):
        lines.append(f"| {key} | {before.get(key, float('nan')):.4f} | {after.get(key, float('nan')):.4f} |")
    if "truth/partial" in last:
        gap_first = first["reward_mean"] - first["truth/partial"]
        gap_last = last["reward_mean"] - last["truth/partial"]
        lines.append(
            f"| training reward − ground-truth partial (hacking gap) | {gap_first:.4f} | {gap_last:.4f} |"
        )
    run = Path(path).parent
    files = [f"`{name}{'/' if (run / name).is_dir() else ''}`" for name in RUN_FILES if (run / name).exists()]
    lines += ["", f"Files: {', '.join(files)}.", ""]
    Path(path).write_text("\n".join(lines))
    Path(path).with_name("final.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
