"""Prompt sources (registered by name) and testbed data."""

from slas_jax.data import brightness, prompts, shapes, text_file
from slas_jax.data.sources import SOURCES, PromptSource, build_prompt_source, register_source

__all__ = [
    "SOURCES",
    "PromptSource",
    "brightness",
    "build_prompt_source",
    "prompts",
    "register_source",
    "shapes",
    "text_file",
]
