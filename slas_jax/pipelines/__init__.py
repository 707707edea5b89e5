"""Text-to-image pipelines: the static model functions, parameters and tokenizer of one backbone family.

``build_pipeline(config)`` returns a :class:`PipelineBundle` for ``config.model.family``: "unet" (Stable
Diffusion 1.x/2.x, DDIM) or "flux" (FLUX, flow-matching SDE), from a diffusers checkpoint folder or, without
one, a randomly initialised tiny model of the same classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slas_jax.config import Config
from slas_jax.grpo import Pipeline
from slas_jax.tokenizers import Tokenize


@dataclass(frozen=True)
class PipelineBundle:
    """pipeline: static functions for the train step; params: the trainable backbone (nnx.State);
    frozen: text encoder / VAE states and constant arrays; tokenize: prompts -> (n, length) int32."""

    pipeline: Pipeline
    params: Any
    frozen: dict[str, Any]
    tokenize: Tokenize


def build_pipeline(
    config: Config,
    vocabulary: Sequence[str] = (),
    *,
    abstract: bool = False,
    place: Callable[[Any], Any] | None = None,
) -> PipelineBundle:
    """The pipeline of ``config.model.family``; ``vocabulary`` (the prompt source's words) sizes the
    word-level tokenizer of a randomly initialised model. ``abstract`` (a checkpoint folder's model, for
    planning): parameters as ShapeDtypeStructs from the config.json files alone, nothing read or allocated,
    ``model.init_checkpoint`` ignored (it has the same shapes). ``place`` (abstract state -> shardings): a
    checkpoint folder's models are read straight onto those shardings, shard by shard
    (``slas_jax.pipelines.components.load_component``). Imported here: each family module imports this one."""
    if config.model.family == "unet":
        from slas_jax.pipelines.sd import build_sd_pipeline as build
    else:
        from slas_jax.pipelines.flux import build_flux_pipeline as build
    bundle = build(config, vocabulary=vocabulary, abstract=abstract, place=place)
    if config.model.init_checkpoint and not abstract:
        from slas_jax.weights import restore_pretrained

        bundle = restore_pretrained(bundle, config.model.init_checkpoint)
    return bundle
