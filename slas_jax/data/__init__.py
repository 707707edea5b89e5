"""Prompt sources, registered by name in ``SOURCES`` (plugins add their own), and TFDS prompt sets."""

from slas_jax.data import prompts, text_file
from slas_jax.data.sources import SOURCES, PromptSource, build_prompt_source, load_rows, register_source

__all__ = [
    "SOURCES",
    "PromptSource",
    "build_prompt_source",
    "load_rows",
    "prompts",
    "register_source",
    "text_file",
]
