"""Prompt sources by name. A source is a deterministic stream addressed by position, so a resumed run
continues exactly where it stopped: ``batch(start, size) -> (prompts, arrays for the reward)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from slas_jax.config import ConfigError, DataConfig, bind_options
from slas_jax.errors import UserError
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


def build_prompt_source(config: DataConfig, field: str = "data") -> PromptSource:
    """The source ``config.name`` built with ``config.options`` (checked against its signature); ``field``
    names the config section in errors (e.g. ``eval.sets.held_out``)."""
    builder = SOURCES.get(config.name, f"{field}.name")
    kwargs = bind_options(builder, config.options, f"{field}.options")
    try:
        return builder(**kwargs)
    except UserError:
        raise
    except ValueError as e:
        raise ConfigError(f"config.{field}.options: {e}") from e
