"""A grid config expanded into cells, and the record of it (``<out>/grid.json``) that later sittings check.

A grid config (``configs/experiments/<name>.py``, a ConfigDict from ``get_config()``) holds:

- ``name``, ``out`` (the grid's folder; cell folders go under it), ``base`` (a training config file, e.g.
  ``configs/shapes_cpu.py``) and ``overrides`` (``"section.key=value"`` strings every cell passes to the train
  CLI as ``--config.section.key=value``; they must turn ``train.checkpoint_every`` on, so cells resume);
- ``axes``: axis name -> value label -> ``{"variant": word of the base config's variant (``unet``),
  "overrides": ("section.key=value", ...)}`` (both optional);
- ``order``: every axis name once, the slowest-varying first (also the order of the parts of a cell's name);
- ``blocks``: products to take, each ``{axis: (labels, ...)}``, an axis left out taking all its values (none:
  the whole product). Their union, without repeats, in block order, is the grid;
- ``report``: what the report compares (read by :mod:`slas_jax.experiments.report`); ``report_dir``: where
  the report and its PNGs go (default ``out``; e.g. a docs/ folder to commit); ``final_eval`` (default
  True): whether shapes cells end with the shapes benchmark of their final checkpoint.

A cell is one training run: its name is ``<axis>-<label>`` parts joined by ``__`` in ``order``, e.g.
``seed-0__method-slas_g1``, which is also its folder under ``out``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slas_jax.errors import ConfigError

GRID_JSON = "grid.json"
LABEL = re.compile(r"^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*$")
RESERVED = ("train.output_dir",)
"""Overrides the runner sets itself: a grid config may not."""


@dataclass(frozen=True)
class Cell:
    """One training run of the grid.

    name: the folder name; labels: axis -> value label; config: the ``--config`` argument (base file with the
    cell's variant words after a colon); overrides: ``section.key=value`` strings in the order they apply
    (grid-wide first, then each axis's in ``order``)."""

    name: str
    labels: dict[str, str]
    config: str
    overrides: tuple[str, ...]

    def train_args(self, run_dir: Path) -> list[str]:
        """The train CLI's arguments (after ``python -m slas_jax.train``) running this cell into ``run_dir``."""
        return [
            "--config",
            self.config,
            *(f"--config.{o}" for o in self.overrides),
            f"--config.train.output_dir={run_dir}",
        ]


def _overrides(values: Any, where: str) -> tuple[str, ...]:
    values = tuple(values or ())
    for value in values:
        if not isinstance(value, str) or "=" not in value or value.startswith("="):
            raise ConfigError(f"{where}: each override is a 'section.key=value' string, got {value!r}")
        if value.split("=", 1)[0] in RESERVED:
            raise ConfigError(f"{where}: {value.split('=', 1)[0]} is set by the runner (one folder per cell)")
    return values


def expand(grid: Mapping[str, Any]) -> list[Cell]:
    """The grid config's cells in block order, each block's product in ``order`` (first axis slowest);
    ConfigError naming the field for a bad config."""
    axes = {name: dict(values) for name, values in dict(grid.get("axes") or {}).items()}
    order = tuple(grid.get("order") or sorted(axes))
    if sorted(order) != sorted(axes):
        raise ConfigError(f"grid order: must name every axis once ({', '.join(sorted(axes))}), got {order}")
    for name, values in axes.items():
        if not values:
            raise ConfigError(f"grid axes.{name}: has no values")
        for label in values:
            if not LABEL.match(label) or not LABEL.match(name):
                raise ConfigError(
                    f"grid axes.{name}.{label}: names and labels are letters and digits joined by single underscores"
                )
    common = _overrides(grid.get("overrides"), "grid overrides")
    base = str(grid.get("base") or "")
    if not base:
        raise ConfigError("grid base: name the training config file, e.g. configs/shapes_cpu.py")
    blocks = list(grid.get("blocks") or ()) or [{}]
    cells: dict[str, Cell] = {}
    for number, block in enumerate(blocks):
        chosen = []
        for name in order:
            labels = tuple(block.get(name, tuple(sorted(axes[name]))))
            unknown = [label for label in labels if label not in axes[name]]
            if unknown:
                raise ConfigError(
                    f"grid blocks[{number}].{name}: unknown labels {unknown}; axis {name!r} has "
                    f"{', '.join(sorted(axes[name]))}"
                )
            chosen.append(labels)
        extra = set(block) - set(order)
        if extra:
            raise ConfigError(f"grid blocks[{number}]: unknown axes {sorted(extra)}")
        for labels in itertools.product(*chosen):
            cell = _cell(base, common, axes, dict(zip(order, labels, strict=True)))
            cells.setdefault(cell.name, cell)
    return list(cells.values())


def _cell(base: str, common: tuple[str, ...], axes: Mapping[str, Any], labels: dict[str, str]) -> Cell:
    variants, overrides = [], list(common)
    for name, label in labels.items():
        spec = dict(axes[name][label] or {})
        unknown = set(spec) - {"variant", "overrides"}
        if unknown:
            raise ConfigError(
                f"grid axes.{name}.{label}: unknown keys {sorted(unknown)} (variant, overrides)"
            )
        if spec.get("variant"):
            variants.append(str(spec["variant"]))
        overrides += _overrides(spec.get("overrides"), f"grid axes.{name}.{label}.overrides")
    config = f"{base}:{','.join(variants)}" if variants else base
    name = "__".join(f"{axis}-{label}" for axis, label in labels.items())
    return Cell(name, labels, config, tuple(overrides))


def grid_record(grid: Mapping[str, Any], cells: Sequence[Cell]) -> dict[str, Any]:
    """What ``grid.json`` holds: the grid config (as JSON) and every cell."""
    record = {"config": dict(grid), "cells": [asdict(c) for c in cells]}
    return json.loads(json.dumps(record))  # tuples as lists, as the file reads back


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two grid records' cells, one phrase each (empty: the same grid)."""
    before = {c["name"]: c for c in old["cells"]}
    after = {c["name"]: c for c in new["cells"]}
    found = []
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    if added:
        found.append(f"cells added: {', '.join(added)}")
    if removed:
        found.append(f"cells removed: {', '.join(removed)}")
    for name in sorted(after.keys() & before.keys()):
        for key in ("config", "overrides"):
            if before[name][key] != after[name][key]:
                found.append(f"cell {name}'s {key} changed ({before[name][key]} -> {after[name][key]})")
    return sorted(found, key=lambda line: (not line.startswith("cells"), line))


def check_record(out: Path, record: Mapping[str, Any], allow_changes: bool) -> None:
    """Writes ``out/grid.json`` on a grid's first run; later, ConfigError in one line naming what changed
    (unless ``allow_changes``, which rewrites it: finished cells whose commands did not change are kept)."""
    path = out / GRID_JSON
    if path.is_file() and not allow_changes:
        found = changes(json.loads(path.read_text()), record)
        if found:
            shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
            raise ConfigError(
                f"the grid in {out} changed since {GRID_JSON} was written: {shown}; pass --allow-changed-grid "
                "to continue with the new grid, or a new config.out"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
