"""Pieces both pipeline families (``sd``, ``flux``) assemble from: the checkpoint folder check, the word-level
text encoder of randomly initialised models, the negative prompt's tokens and the image range conversion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.config import Config
from slas_jax.models import clip
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines.architectures import text_encoder_config
from slas_jax.tokenizers import Tokenize, WordTokenizer


def check_checkpoint_folder(folder: str | Path, required: Sequence[str], what: str, published: str) -> Path:
    """The folder as a Path, or ConversionError naming the first missing file and where to get one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(
            f"{what} checkpoint folder {folder} does not exist; expected a diffusers-format folder (or one "
            f"converted from it by python -m slas_jax.convert) with {', '.join(required)} — {published}"
        )
    for name in required:
        if not (folder / name).is_file():
            raise ConversionError(f"{what} checkpoint folder {folder} lacks {name} — {published}")
    return folder


def random_text_encoder(
    config: Config, vocabulary: Sequence[str], max_length: int, rngs: nnx.Rngs
) -> tuple[WordTokenizer, clip.CLIPTextModel]:
    """The word-level tokenizer over ``vocabulary`` (``max_length`` tokens per prompt) and the randomly
    initialised CLIP text encoder of ``config.model.text_architecture``, drawn first from ``rngs``."""
    tokenizer = WordTokenizer(vocabulary, max_length)
    return tokenizer, clip.CLIPTextModel(text_encoder_config(config.model, tokenizer), rngs=rngs)


CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json")
"""The files of a pipeline folder that an abstract build (``build_pipeline(..., abstract=True)``) reads besides
each component's config.json."""


def placeholder_tokenizer(max_length: int) -> Tokenize:
    """Zeros (n, max_length) int32 for n prompts: a tokenizer's output shape without its files, for abstract
    builds (planning), where only the shapes of the batch matter."""

    def tokenize(prompts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(prompts), max_length), np.int32)

    return tokenize


def negative_tokens(tokenize: Tokenize, config: Config) -> jax.Array:
    """(1, length) int32 tokens of ``config.sampler.negative_prompt``, the unconditional prompt of
    classifier-free guidance."""
    return jnp.asarray(tokenize([config.sampler.negative_prompt]))


def to_unit_range(images: jax.Array) -> jax.Array:
    """Model-space images (b, h, w, 3) in [-1, 1], any float dtype -> float32 in [0, 1], clipped."""
    return jnp.clip((images.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
