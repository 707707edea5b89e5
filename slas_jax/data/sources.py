"""Prompt sources by name. A source is a deterministic stream addressed by position, so a resumed run
continues exactly where it stopped: ``batch(start, size) -> (prompts, arrays for the reward)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from slas_jax.config import ConfigError, DataConfig


class PromptSource(Protocol):
    """vocabulary: the words a word-level tokenizer needs (empty for sources meant for real tokenizers)."""

    vocabulary: Sequence[str]

    def batch(self, start: int, size: int) -> tuple[list[str], dict[str, np.ndarray]]: ...


SOURCES: dict[str, Callable[..., PromptSource]] = {}


def register_source(name: str) -> Callable[[Callable[..., PromptSource]], Callable[..., PromptSource]]:
    """Decorator adding a builder ``(**options) -> PromptSource`` under ``name``."""

    def add(builder: Callable[..., PromptSource]) -> Callable[..., PromptSource]:
        SOURCES[name] = builder
        return builder

    return add


def build_prompt_source(config: DataConfig) -> PromptSource:
    """The source ``config.name`` built with ``config.options``; unknown names or options are ConfigErrors."""
    if config.name not in SOURCES:
        raise ConfigError(
            f"config.data.name: unknown prompt source {config.name!r}; choose one of {sorted(SOURCES)}"
        )
    options: Mapping[str, Any] = config.options
    try:
        return SOURCES[config.name](**options)
    except TypeError as e:
        raise ConfigError(f"config.data.options: {e}") from e
