"""GenEval's image folder, as its own generation script (djghosh13/geneval, generation/diffusers_generate.py)
writes it and its evaluation/evaluate_images.py reads it::

    <out>/<index:05d>/metadata.jsonl      line <index> of evaluation_metadata.jsonl (json.dump, no newline)
    <out>/<index:05d>/samples/<n:05d>.png 4 images per prompt by default
    <out>/<index:05d>/grid.png            the samples in one column (the script's default; optional there)

The evaluator walks the numbered folders, reads each ``metadata.jsonl`` with ``json.load`` and scores every
``samples/<digits>.png``. The grid follows torchvision's ``make_grid`` with the script's default
``--batch_size 1`` (one column, 2-pixel black padding); ``skip_grid`` mirrors its ``--skip_grid``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slas_jax.data.prompts import read_geneval_jsonl
from slas_jax.errors import UserError
from slas_jax.evaluate.driver import ImageJob, write_png

METADATA_FILE = "metadata.jsonl"
SAMPLES_DIR = "samples"
GRID_FILE = "grid.png"
GRID_PADDING = 2


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of GenEval's ``evaluation_metadata.jsonl`` in file order (blank lines skipped),
    checked by ``read_geneval_jsonl``; UserError with its one line on a bad file."""
    try:
        return [dict(record.metadata) for record in read_geneval_jsonl(path)]
    except ValueError as e:
        raise UserError(str(e)) from e


def prompt_folder(out: Path, index: int) -> Path:
    return out / f"{index:05d}"


def jobs(out: Path, metadata: Sequence[Mapping[str, Any]], images_per_prompt: int) -> list[ImageJob]:
    """Image n of prompt i at ``<out>/<i:05d>/samples/<n:05d>.png``."""
    return [
        ImageJob(i, n, entry["prompt"], prompt_folder(out, i) / SAMPLES_DIR / f"{n:05d}.png")
        for i, entry in enumerate(metadata)
        for n in range(images_per_prompt)
    ]


def write_metadata(out: Path, metadata: Sequence[Mapping[str, Any]], indices: Iterable[int]) -> int:
    """Each prompt's ``metadata.jsonl`` (``json.dumps`` of its object, as the official script's
    ``json.dump``), written only where it is missing or differs; returns how many were written."""
    written = 0
    for i in indices:
        path = prompt_folder(out, i) / METADATA_FILE
        text = json.dumps(metadata[i])
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written += 1
    return written


def grid(samples: Sequence[np.ndarray]) -> np.ndarray:
    """(h, w, 3) uint8 images -> one column with ``make_grid``'s 2-pixel black padding around every cell:
    (n * (h + 2) + 2, w + 4, 3) uint8."""
    h, w, _ = samples[0].shape
    out = np.zeros((len(samples) * (h + GRID_PADDING) + GRID_PADDING, w + 2 * GRID_PADDING, 3), np.uint8)
    for row, pixels in enumerate(samples):
        top = row * (h + GRID_PADDING) + GRID_PADDING
        out[top : top + h, GRID_PADDING : GRID_PADDING + w] = pixels
    return out


def write_grids(out: Path, all_jobs: Sequence[ImageJob], indices: Iterable[int]) -> int:
    """``grid.png`` of each prompt in ``indices`` from its samples on disk; returns how many were written."""
    by_prompt: dict[int, list[Path]] = {}
    for job in all_jobs:
        by_prompt.setdefault(job.prompt_index, []).append(job.path)
    written = 0
    for i in indices:
        samples = []
        for path in by_prompt[i]:
            with Image.open(path) as image:
                samples.append(np.asarray(image.convert("RGB")))
        write_png(prompt_folder(out, i) / GRID_FILE, grid(samples))
        written += 1
    return written


def stale_grids(out: Path, written: Iterable[Path], owned: Iterable[int]) -> list[int]:
    """The owned prompts whose grid must be (re)written: a sample of theirs was just written, or the grid is
    missing. ``written`` paths lie at ``<out>/<index>/samples/<n>.png``."""
    changed = {int(path.parent.parent.name) for path in written}
    return sorted(i for i in owned if i in changed or not (prompt_folder(out, i) / GRID_FILE).is_file())
