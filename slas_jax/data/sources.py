"""Prompt sources by name. A source is a deterministic stream addressed by position, so a resumed run
continues exactly where it stopped: ``batch(start, size) -> (prompts, arrays for the reward)``. Addressing by
position also splits a global batch across processes: :func:`load_rows` reads only a process's rows of it,
the same prompts one process reading the whole batch has at those rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from slas_jax.config import DataConfig
from slas_jax.registry import Registry


class PromptSource(Protocol):
    """vocabulary: the words a word-level tokenizer needs (empty for sources meant for real tokenizers);
    arrays: the names of the per-prompt arrays ``batch`` returns (what rewards and scorers can read)."""

    vocabulary: Sequence[str]
    arrays: Sequence[str]

    def batch(self, start: int, size: int) -> tuple[list[str], dict[str, np.ndarray]]: ...


SourceBuilder = Callable[..., PromptSource]
SOURCES: Registry[SourceBuilder] = Registry("prompt source", "data.name")
register_source = SOURCES.register


def build_prompt_source(config: DataConfig, section: str = "data") -> PromptSource:
    """The source ``config.name`` built with ``config.options`` (checked against its signature); ``section``
    names the config section in errors (e.g. ``eval.sets.held_out``)."""
    return SOURCES.build(config.name, config.options, section)


def load_rows(
    source: PromptSource, start: int, rows: Sequence[tuple[int, int]]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The rows ``rows`` ((begin, end) ranges, in order; e.g. ``parallel.process_rows``) of the batch at
    stream position ``start``: the prompts at positions start + begin .. start + end - 1 of each range,
    concatenated, and their per-prompt arrays (leading axis the number of prompts) concatenated likewise."""
    texts: list[str] = []
    parts: list[dict[str, np.ndarray]] = []
    for begin, end in rows:
        part_texts, part_arrays = source.batch(start + begin, end - begin)
        texts += part_texts
        parts.append(part_arrays)
    return texts, {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
