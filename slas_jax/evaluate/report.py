"""Run reports: captioned sample grids, reward curves and the markdown summary of a run folder."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from slas_jax.config import Config


def save_grid(
    rows: Sequence[tuple[str, Sequence[str], np.ndarray]], path: str | Path, title: str, scale: int = 4
) -> None:
    """rows: (set name, prompts (n,), images (n, samples, h, w, 3) in [0, 1]); one captioned cell per prompt
    holding its samples stacked vertically, images upscaled ``scale`` times (nearest) for visibility."""
    cell_w = max(images.shape[3] for _, _, images in rows) * scale + 8
    cell_h = max(images.shape[1] * images.shape[2] for _, _, images in rows) * scale + 36
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
            tile = Image.fromarray(pixels).resize(
                (pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST
            )
            canvas.paste(tile, (left, top + 14))
            for line, text in enumerate(_wrap(prompt, 18)[:2]):
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


def save_curves(
    history: Sequence[Mapping[str, float]], before: Mapping[str, float], path: str | Path, title: str
) -> None:
    """Reward curves PNG over updates done: rollout metrics of step i sit at x = i (sampled after i
    updates), fixed-set accuracies measured after step i at x = i + 1, and ``before`` at x = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(history))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [h["reward_mean"] for h in history], label="training reward", color="tab:blue")
    for key, color in (("truth/partial", "tab:green"), ("truth/strict", "tab:olive")):
        if key in history[0]:
            ax.plot(
                steps,
                [h[key] for h in history],
                label=f"ground truth {key.split('/')[1]} (train samples)",
                color=color,
            )
    fixed_sets = sorted(
        {k for h in [before, *history] for k in h if k.endswith("/strict") and not k.startswith("truth/")}
    )
    for key in fixed_sets:
        points = [(0, before[key])] if key in before else []
        points += [(i + 1, h[key]) for i, h in enumerate(history) if key in h and not math.isnan(h[key])]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", linestyle="--", label=f"{key} (fixed prompts)")
    ax.set_xlabel("GRPO updates done")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
    lines += ["", "Files: `metrics.jsonl`, `curves.png`, `samples_before.png`, `samples_after.png`.", ""]
    Path(path).write_text("\n".join(lines))
    Path(path).with_name("final.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
