"""Selecting backbone parameters by regular expressions over their dotted paths (``jax.tree_util.keystr``
with ``simple=True, separator="."``, e.g. ``transformer_blocks.attn.to_q.kernel.value``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax

from slas_jax.config import ConfigError


def dotted_path(path: tuple[Any, ...]) -> str:
    """A ``tree_flatten_with_path`` key path as the dotted string the patterns are matched against."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def select(params: Any, patterns: Sequence[str], field: str) -> Any:
    """A tree like ``params`` of Python bools: True where a leaf's dotted path matches one of ``patterns``
    (``re.search``). ConfigError naming ``field`` when a pattern matches nothing (a typo would otherwise pass
    silently)."""
    compiled = [re.compile(p) for p in patterns]
    used: set[str] = set()

    def hit(path: tuple[Any, ...], _: Any) -> bool:
        key = dotted_path(path)
        hits = {c.pattern for c in compiled if c.search(key)}
        used.update(hits)
        return bool(hits)

    mask = jax.tree_util.tree_map_with_path(hit, params)
    if unused := [p for p in patterns if p not in used]:
        raise ConfigError(f"config.{field}: {unused[0]!r} matches no backbone parameter")
    return mask
