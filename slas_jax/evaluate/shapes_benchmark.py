"""The testbed's benchmark: the config's fixed prompt sets (``eval.sets``; for ``configs/shapes_cpu.py`` the
training and held-out prompts) sampled into image files, read back as 8-bit PNGs as GenEval's evaluator
reads them, and judged by the config's ground-truth scorer (``eval.scorer``, "shapes": strict 0/1 as
GenEval, partial credit), overall and per GenEval category::

    <out>/<set>/<position:05d>_<j>.png    the prompt at that position of the set's seeded order
    <out>/shapes.json                     {set: {"all": {...}, "categories": {tag: {...}}}}
    <out>/shapes.md                       the same as a markdown table

The library names the scorer and the sources only through their registries: it never imports the testbed.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slas_jax.config import Config, ConfigError, DataConfig
from slas_jax.data import build_prompt_source
from slas_jax.data.geneval import TAG_KEY, TAGS
from slas_jax.evaluate.driver import ImageJob
from slas_jax.evaluate.fixed_sets import repeat_rows
from slas_jax.rewards import check_reads
from slas_jax.scorers import SCORERS, Scorer

RESULTS_JSON = "shapes.json"
RESULTS_MD = "shapes.md"


@dataclass(frozen=True)
class BenchmarkSet:
    """One fixed set: its ``name``, ``prompts`` and the source's per-prompt ``arrays`` (leading axis the
    prompts), and the image ``jobs`` of its prompts."""

    name: str
    prompts: list[str]
    arrays: dict[str, np.ndarray]
    jobs: list[ImageJob]


def scorer_of(config: Config) -> Scorer:
    if not config.eval.scorer:
        raise ConfigError(
            "config.eval.scorer: the shapes benchmark needs a ground-truth scorer, e.g. 'shapes'"
        )
    if not config.eval.sets:
        raise ConfigError(
            "config.eval.sets: the shapes benchmark needs fixed prompt sets (configs/shapes_cpu.py)"
        )
    return SCORERS.get(config.eval.scorer)


def prompt_index(set_name: str, position: int) -> int:
    """The key index of the prompt at ``position`` (< 2^20) of the set ``set_name``: 12 bits of the name's
    CRC-32 above 20 bits of position, a uint32 as ``jax.random.fold_in`` takes it."""
    if not 0 <= position < 2**20:
        raise ConfigError(
            f"the shapes benchmark indexes at most 2^20 prompts per set, got position {position}"
        )
    return (zlib.crc32(set_name.encode()) % 4096) << 20 | position


def benchmark_sets(config: Config, out: Path, num_prompts: int, images_per_prompt: int) -> list[BenchmarkSet]:
    """The sets of ``eval.sets``: the first ``num_prompts`` prompts of each (0: all, for a source with a
    length), in its seeded order (the order the in-training evaluation reads its first ``eval.num_prompts``
    from); image j of the prompt at position p at ``<out>/<set>/<p:05d>_<j>.png``, its key's prompt index
    :func:`prompt_index` (the set's name in its high bits), so no two sets share noise and adding a set
    changes no other set's images."""
    scorer = scorer_of(config)
    sets = []
    for name, spec in config.eval.sets.items():
        field = f"eval.sets.{name}"
        source = build_prompt_source(DataConfig(name=spec["name"], options=spec.get("options", {})), field)
        check_reads(
            scorer.reads,
            source.arrays,
            f"scorer {config.eval.scorer!r}",
            f"prompt source {spec['name']!r}",
            f"{field}.name",
        )
        count = num_prompts
        if count <= 0:
            try:
                count = len(source)
            except TypeError as e:
                raise ConfigError(
                    f"{field}: prompt source {spec['name']!r} has no length; pass --num_prompts"
                ) from e
        prompts, arrays = source.batch(0, count)
        jobs = [
            ImageJob(prompt_index(name, p), j, prompt, out / name / f"{p:05d}_{j}.png")
            for p, prompt in enumerate(prompts)
            for j in range(images_per_prompt)
        ]
        sets.append(BenchmarkSet(name, prompts, {k: np.asarray(v) for k, v in arrays.items()}, jobs))
    return sets


def read_images(paths: Sequence[Path]) -> np.ndarray:
    """(n, h, w, 3) float32 in [0, 1] from 8-bit RGB files."""
    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(np.asarray(image.convert("RGB"), np.float32) / 255.0)
    return np.stack(out)


def _means(scores: Mapping[str, np.ndarray], chosen: np.ndarray) -> dict[str, Any]:
    return {"images": int(chosen.sum()), **{k: float(np.mean(v[chosen])) for k, v in sorted(scores.items())}}


def score_set(config: Config, bench: BenchmarkSet, images_per_prompt: int) -> dict[str, Any]:
    """The scorer's means over the set's images, overall (``all``) and per GenEval category
    (``categories``, when the source provides ``geneval_tag``)."""
    scorer = scorer_of(config)
    images = read_images([job.path for job in bench.jobs])
    arrays = repeat_rows(bench.arrays, images_per_prompt)
    scores = {k: np.asarray(v, np.float64) for k, v in scorer.fn(images, arrays).items()}
    every = np.ones(len(images), bool)
    result: dict[str, Any] = {"prompts": len(bench.prompts), "all": _means(scores, every)}
    if TAG_KEY in arrays:
        tags = arrays[TAG_KEY]
        result["categories"] = {
            TAGS[t]: _means(scores, tags == t) for t in range(len(TAGS)) if np.any(tags == t)
        }
    return result


def markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per set and category: images, then each metric (strict as a percentage, others as means)."""
    metrics = sorted(next(iter(results.values()))["all"].keys() - {"images"})
    header = "| set | category | images | " + " | ".join(metrics) + " |"
    lines = [header, "| " + " | ".join(["---"] * (3 + len(metrics))) + " |"]

    def row(name: str, category: str, values: Mapping[str, Any]) -> str:
        cells = [f"{100 * values[m]:.1f}%" if m == "strict" else f"{values[m]:.3f}" for m in metrics]
        return f"| {name} | {category} | {values['images']} | " + " | ".join(cells) + " |"

    for name, result in results.items():
        lines.append(row(name, "all", result["all"]))
        lines += [row(name, tag, values) for tag, values in result.get("categories", {}).items()]
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    (out / RESULTS_MD).write_text(markdown(results))
