"""Prompt sources by name. A source is a deterministic stream addressed by position, so a resumed run
continues exactly where it stopped: ``batch(start, size) -> (prompts, arrays for the reward)``."""

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
