"""The architectures of randomly initialised models (``model.checkpoint`` None): the backbone and text encoder
configs built from ``model.architecture`` and ``model.text_architecture``, and the checks that refuse a bad
mapping with one line naming the field, before anything is initialised or compiled.

``architecture`` overrides fields of the family's backbone config (:class:`~slas_jax.models.unet.UNetConfig`
for "unet", :class:`~slas_jax.models.flux.FluxConfig` for "flux"), ``text_architecture`` fields of
:class:`~slas_jax.models.clip.CLIPTextConfig`. The fields the pipeline derives itself (pixel channels, text
feature widths, tokenizer sizes, dtype, remat) are refused there: a value other than the derived one would build
a model that does not fit its inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from slas_jax.config import ModelConfig, _coerce, require
from slas_jax.errors import ConfigError
from slas_jax.models import clip, flux, unet
from slas_jax.tokenizers import WordTokenizer

SET_BY_PIPELINE: dict[str, dict[str, str]] = {
    "unet": {
        "in_channels": "to 3 (RGB pixels: a random model has no VAE)",
        "out_channels": "to 3 (RGB pixels: a random model has no VAE)",
        "sample_size": "from model.resolution",
        "cross_attention_dim": "from text_architecture.hidden_size",
        "dtype": "from model.dtype",
        "remat": "from model.remat",
    },
    "flux": {
        "in_channels": "to 12 (2x2 patches of RGB pixels: a random model has no VAE)",
        "out_channels": "to in_channels (the velocity has the input's layout)",
        "joint_attention_dim": "from text_architecture.hidden_size",
        "pooled_projection_dim": "from text_architecture.hidden_size",
        "dtype": "from model.dtype",
        "remat": "from model.remat",
    },
    "text": {
        "vocab_size": "from the word tokenizer over the prompt source's vocabulary",
        "max_position_embeddings": "from the word tokenizer's length",
        "eos_token_id": "from the word tokenizer",
        "dtype": "from model.dtype",
    },
}
"""Per mapping ("unet" / "flux" backbone, "text" encoder): the config fields the pipeline sets, and from what."""


def text_encoder_config(model: ModelConfig, tokenizer: WordTokenizer) -> clip.CLIPTextConfig:
    """The CLIP text encoder of a random model: sized by the word tokenizer, pooling at its eos,
    ``model.text_architecture`` setting the rest."""
    return clip.CLIPTextConfig(
        **{
            "vocab_size": tokenizer.vocab_size,
            "max_position_embeddings": tokenizer.max_length,
            "eos_token_id": WordTokenizer.EOS,
            "dtype": jnp.dtype(model.dtype),
            **model.text_architecture,
        }
    )


def unet_config(model: ModelConfig, text: clip.CLIPTextConfig) -> unet.UNetConfig:
    """The pixel-space UNet of a random model, attending to ``text``'s token states; ``model.architecture``
    sets the rest."""
    return unet.UNetConfig(
        **{
            "in_channels": 3,
            "out_channels": 3,
            "sample_size": model.resolution,
            "cross_attention_dim": text.hidden_size,
            "dtype": jnp.dtype(model.dtype),
            "remat": model.remat,
            **model.architecture,
        }
    )


def flux_config(model: ModelConfig, text: clip.CLIPTextConfig) -> flux.FluxConfig:
    """The FLUX transformer of a random model on 2x2 pixel patches, conditioned on ``text``'s token states
    and pooled output; ``model.architecture`` sets the rest."""
    return flux.FluxConfig(
        **{
            "in_channels": 12,
            "out_channels": None,
            "joint_attention_dim": text.hidden_size,
            "pooled_projection_dim": text.hidden_size,
            "dtype": jnp.dtype(model.dtype),
            "remat": model.remat,
            **model.architecture,
        }
    )


def check_architecture(
    family: str, architecture: Mapping[str, Any], text_architecture: Mapping[str, Any], where: str = "model"
) -> None:
    """ConfigError("config.<where>.architecture.<field>: ...", or ``text_architecture``) for the first field
    that is unknown, set by the pipeline, of the wrong type, or impossible for the model classes: non-positive
    sizes, widths and counts, group-norm groups that do not divide a block's channels, more UNet heads than a
    block's channels, text-encoder heads that do not divide its width, rotary dimensions that do not split the head dimension, block lists of different lengths."""
    backbone = unet.UNetConfig if family == "unet" else flux.FluxConfig
    fields = _effective_fields(backbone, architecture, SET_BY_PIPELINE[family], f"{where}.architecture")
    (_check_unet if family == "unet" else _check_flux)(fields, f"{where}.architecture")
    text_where = f"{where}.text_architecture"
    _check_text(
        _effective_fields(clip.CLIPTextConfig, text_architecture, SET_BY_PIPELINE["text"], text_where),
        text_where,
    )


def _effective_fields(
    cls: type, overrides: Mapping[str, Any], set_by_pipeline: Mapping[str, str], where: str
) -> dict[str, Any]:
    """The fields of dataclass ``cls``: defaults, replaced by the typed ``overrides``; ConfigError for an
    override that is unknown, set by the pipeline, or not of the field's type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    settable = sorted(set(fields) - set(set_by_pipeline))
    for key, value in overrides.items():
        require(key in fields, f"{where}.{key}", f"unknown key; valid keys here are {', '.join(settable)}")
        require(
            key not in set_by_pipeline,
            f"{where}.{key}",
            f"is set by the pipeline {set_by_pipeline.get(key)}; remove it",
        )
        fields[key] = _typed(value, hints[key], f"{where}.{key}")
    return fields


_NOUNS = {int: "integer", float: "number", str: "string"}


def _describe(annotation: Any) -> str:
    """How a field type reads in a message: 'an integer', 'an integer or a tuple of integers', 'None'."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(map(_describe, typing.get_args(annotation)))
    if typing.get_origin(annotation) is tuple:
        return f"a tuple of {_NOUNS[typing.get_args(annotation)[0]]}s"
    if annotation is type(None):
        return "None"
    if annotation is bool:
        return "true or false"
    noun = _NOUNS[annotation]
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _typed(value: Any, annotation: Any, where: str) -> Any:
    """``value`` coerced to the field type ``annotation``, or ConfigError("config.<where>: must be <type>")."""
    try:
        return _coerced(value, annotation, where)
    except ConfigError:
        raise ConfigError(f"config.{where}: must be {_describe(annotation)}, got {value!r}") from None


def _coerced(value: Any, annotation: Any, where: str) -> Any:
    """Config fields' coercion (slas_jax.config), plus what those fields do not need and the model configs
    use: unions of several types (``int | tuple[int, ...]``) and variable-length tuples."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            with contextlib.suppress(ConfigError):
                return _coerced(value, option, where)
        raise ConfigError(f"config.{where}: fits none of {args}")
    if annotation is type(None):
        require(value is None, where, "must be None")
        return None
    if origin is tuple and args[-1] is Ellipsis:
        require(isinstance(value, list | tuple), where, "must be a tuple")
        return tuple(_coerced(item, args[0], where) for item in value)
    return _coerce(value, annotation, where)


def _require_positive(fields: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        require(fields[name] >= 1, f"{where}.{name}", f"must be >= 1, got {fields[name]}")


def _check_unet(fields: Mapping[str, Any], where: str) -> None:
    """The UNetConfig combinations UNet2DConditionModel cannot build or run."""
    channels = fields["block_out_channels"]
    n = len(channels)
    require(
        n >= 1 and all(c >= 1 for c in channels),
        f"{where}.block_out_channels",
        f"must be one or more positive channel counts (one per block), got {channels}",
    )
    for key, supported in (
        ("down_block_types", unet.DOWN_BLOCK_TYPES),
        ("up_block_types", unet.UP_BLOCK_TYPES),
    ):
        kinds = fields[key]
        require(
            len(kinds) == n,
            f"{where}.{key}",
            f"needs one entry per block_out_channels entry ({n}), got {kinds}",
        )
        for kind in kinds:
            require(
                kind in supported,
                f"{where}.{key}",
                f"{kind!r} is not supported; choose from {', '.join(supported)}",
            )
    per_block = {}
    for key in ("layers_per_block", "transformer_layers_per_block", "num_attention_heads"):
        value = fields[key]
        per_block[key] = (value,) * n if isinstance(value, int) else value
        require(
            len(per_block[key]) == n,
            f"{where}.{key}",
            f"must be an integer or {n} integers (one per block), got {value}",
        )
        require(all(v >= 1 for v in per_block[key]), f"{where}.{key}", f"must be >= 1, got {value}")
    groups = fields["norm_num_groups"]
    require(groups >= 1, f"{where}.norm_num_groups", f"must be >= 1, got {groups}")
    # Every resnet, transformer and the output norm group-normalise features whose width is a block's channel
    # count (or the sum of two, at the up blocks' skip concatenations).
    require(
        all(c % groups == 0 for c in channels),
        f"{where}.norm_num_groups",
        f"{groups} groups do not divide every block_out_channels entry {channels}",
    )
    # Attention runs in the CrossAttn down blocks, the CrossAttn up blocks (with the settings and channels of
    # their mirrored down block) and the mid block (the last block's).
    down, up = fields["down_block_types"], fields["up_block_types"]
    attended = (
        {i for i, kind in enumerate(down) if kind == "CrossAttnDownBlock2D"}
        | {n - 1 - i for i, kind in enumerate(up) if kind == "CrossAttnUpBlock2D"}
        | {n - 1}
    )
    for i in sorted(attended):
        heads = per_block["num_attention_heads"][i]
        # As in diffusers, each head attends over channels // heads features (heads that do not divide the
        # channels leave an inner width below them), so only more heads than channels is impossible.
        require(
            heads <= channels[i],
            f"{where}.num_attention_heads",
            f"{heads} heads exceed block {i}'s {channels[i]} channels (block_out_channels {channels}); "
            "each head attends over channels // heads >= 1 of them",
        )
    for key in ("conv_in_kernel", "conv_out_kernel"):
        require(
            fields[key] >= 1 and fields[key] % 2 == 1,
            f"{where}.{key}",
            f"must be a positive odd integer (padded by kernel // 2 to keep the image size), got {fields[key]}",
        )
    require(fields["downsample_padding"] >= 0, f"{where}.downsample_padding", "must be >= 0")
    require(
        fields["time_embedding_dim"] is None or fields["time_embedding_dim"] >= 1,
        f"{where}.time_embedding_dim",
        f"must be >= 1 or None (4 x block_out_channels[0]), got {fields['time_embedding_dim']}",
    )
    half = channels[0] // 2
    require(
        0 <= fields["freq_shift"] < half,
        f"{where}.freq_shift",
        f"must be in [0, block_out_channels[0] // 2 = {half}): the sinusoidal timestep embedding's frequencies "
        f"are 10000^(-k / ({half} - freq_shift)), got {fields['freq_shift']}",
    )
    require(fields["norm_eps"] > 0, f"{where}.norm_eps", f"must be > 0, got {fields['norm_eps']}")
    require(
        fields["mid_block_scale_factor"] > 0,
        f"{where}.mid_block_scale_factor",
        f"must be > 0 (the mid block's resnets divide by it), got {fields['mid_block_scale_factor']}",
    )
    require(
        fields["prediction_type"] in ("epsilon", "v_prediction"),
        f"{where}.prediction_type",
        f"must be 'epsilon' or 'v_prediction', got {fields['prediction_type']!r}",
    )


def _check_flux(fields: Mapping[str, Any], where: str) -> None:
    """The FluxConfig combinations FluxTransformer2DModel cannot build or run."""
    _require_positive(
        fields, ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads"), where
    )
    rope, head_dim = fields["axes_dims_rope"], fields["attention_head_dim"]
    # Position ids have three axes (text, row, column); each rotates its share of a head in feature pairs.
    require(
        len(rope) == 3 and all(d >= 0 and d % 2 == 0 for d in rope) and sum(rope) == head_dim,
        f"{where}.axes_dims_rope",
        f"must be 3 even numbers (the text, row and column id axes' rotary dimensions) summing to "
        f"attention_head_dim = {head_dim}, got {rope}",
    )


def _check_text(fields: Mapping[str, Any], where: str) -> None:
    """The CLIPTextConfig combinations CLIPTextModel cannot build or run."""
    _require_positive(
        fields,
        ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "projection_dim"),
        where,
    )
    heads, width = fields["num_attention_heads"], fields["hidden_size"]
    require(
        width % heads == 0,
        f"{where}.num_attention_heads",
        f"{heads} heads do not divide hidden_size {width}; each head attends over hidden_size // heads features",
    )
    require(
        fields["hidden_act"] in clip.ACTIVATIONS,
        f"{where}.hidden_act",
        f"must be one of {', '.join(map(repr, clip.ACTIVATIONS))}, got {fields['hidden_act']!r}",
    )
    require(
        fields["layer_norm_eps"] > 0,
        f"{where}.layer_norm_eps",
        f"must be > 0, got {fields['layer_norm_eps']}",
    )
