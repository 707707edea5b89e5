"""CLIP text and vision towers (transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` /
``CLIPVisionModelWithProjection`` / ``CLIPModel``) in Flax NNX.

The text tower encodes prompts for Stable Diffusion (last hidden state) and FLUX (pooled output); the vision
tower and the full :class:`CLIPModel` serve CLIP-family rewards (PickScore, HPS). Images are NHWC and already
resized / normalised by the caller. The module tree mirrors transformers' names (``text_model.encoder.layers.3.
self_attn.q_proj``...), so checkpoints convert through :data:`TEXT_CONVERSION_RULES`,
:data:`VISION_CONVERSION_RULES` (which also accept the un-prefixed names that transformers 5 writes for a
plain ``CLIPTextModel`` / ``CLIPVisionModel``) and :data:`CONVERSION_RULES` (``CLIPModel``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from slas_jax.models import conversion, layers
from slas_jax.models.conversion import ConversionError, Rule


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,  # OpenAI CLIP (SD1.x text encoder)
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # LAION / OpenCLIP conversions (PickScore, SD2)
}


def _check_activation(hidden_act: str, what: str) -> None:
    if hidden_act not in ACTIVATIONS:
        raise ValueError(f"{what}.hidden_act={hidden_act!r} is not supported (one of {sorted(ACTIVATIONS)})")


def _from_dict(cls: type, config: Mapping[str, Any], what: str, **overrides: Any) -> Any:
    """The dataclass ``cls`` from the transformers config keys that share its field names."""
    keys = [f.name for f in dataclasses.fields(cls) if f.name not in ("dtype", "remat")]
    kwargs = {k: config[k] for k in keys if k in config}
    try:
        return cls(**{**kwargs, **overrides})
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{what} config: {e}") from e


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPTextConfig:
    """CLIP text transformer (field names follow transformers' ``CLIPTextConfig``); defaults: SD1.x's encoder."""

    vocab_size: int = 49408
    """Rows of the token embedding (49408: CLIP's byte-level BPE vocabulary)."""
    hidden_size: int = 768
    """Model width."""
    intermediate_size: int = 3072
    """Hidden width of each layer's MLP."""
    num_hidden_layers: int = 12
    """Encoder layers."""
    num_attention_heads: int = 12
    """Attention heads per layer; hidden_size must be a multiple."""
    max_position_embeddings: int = 77
    """Rows of the learned position embedding: the longest token sequence (77 for CLIP)."""
    hidden_act: str = "quick_gelu"
    """MLP activation: "quick_gelu" (OpenAI CLIP) or "gelu" (exact erf GELU: LAION / OpenCLIP conversions)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""
    eos_token_id: int = 2
    """Pooling position rule (transformers 5): 2, the value in pre-2023 configs such as SD1.x's, means "the
    position of the largest token id" (the EOT token has the largest id in CLIP's vocabulary); any other value
    means "the first position holding eos_token_id" (position 0 when there is none)."""
    with_projection: bool = False
    """Add ``text_projection`` (CLIPTextModelWithProjection / CLIPModel); set from config.json's architectures."""
    projection_dim: int = 768
    """Width of text_projection's output (only with ``with_projection``)."""
    dtype: Any = jnp.float32
    """Compute dtype (parameters stay float32; outputs are returned in float32)."""
    remat: bool = False
    """Gradient checkpointing: recompute each encoder layer in the backward pass."""

    def __post_init__(self) -> None:
        _check_activation(self.hidden_act, "CLIPTextConfig")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPTextConfig: hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )
        if not isinstance(self.eos_token_id, int):
            raise ValueError(f"CLIPTextConfig.eos_token_id must be one int, got {self.eos_token_id!r}")

    @classmethod
    def sd14(cls, **overrides: Any) -> CLIPTextConfig:
        """CompVis/stable-diffusion-v1-4 ``text_encoder/config.json``: OpenAI CLIP ViT-L/14's text tower
        (123M parameters)."""
        return cls(**overrides)

    @classmethod
    def vit_h14(cls, **overrides: Any) -> CLIPTextConfig:
        """laion/CLIP-ViT-H-14-laion2B-s32B-b79K's text tower with projection (the backbone of PickScore /
        HPSv2)."""
        return cls(
            **{
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "hidden_act": "gelu",
                # Either pooling rule finds the end-of-text token (49407, the largest id) in CLIP-tokenised
                # prompts.
                "eos_token_id": 49407,
                "with_projection": True,
                "projection_dim": 1024,
                **overrides,
            }
        )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> CLIPTextConfig:
        """Reads a transformers ``CLIPTextConfig`` dict (a text_encoder/config.json, or a CLIPModel config's
        ``text_config``); ``overrides`` set our own fields (dtype, remat, with_projection)."""
        with_projection = "CLIPTextModelWithProjection" in (config.get("architectures") or ())
        return _from_dict(cls, config, "clip text", **{"with_projection": with_projection, **overrides})


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig:
    """CLIP vision transformer with projection (transformers' ``CLIPVisionConfig``); defaults: OpenAI ViT-L/14."""

    hidden_size: int = 1024
    """Model width."""
    intermediate_size: int = 4096
    """Hidden width of each layer's MLP."""
    num_hidden_layers: int = 24
    """Encoder layers."""
    num_attention_heads: int = 16
    """Attention heads per layer; hidden_size must be a multiple."""
    num_channels: int = 3
    """Channels of the input images (3: RGB)."""
    image_size: int = 224
    """Side of the square input images in pixels; a multiple of patch_size."""
    patch_size: int = 14
    """Side of the square non-overlapping patches (the patch embedding's kernel and stride)."""
    hidden_act: str = "quick_gelu"
    """MLP activation: "quick_gelu" (OpenAI CLIP) or "gelu" (exact erf GELU: LAION / OpenCLIP conversions)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""
    projection_dim: int = 768
    """Width of visual_projection's output, the image embedding."""
    dtype: Any = jnp.float32
    """Compute dtype (parameters stay float32; outputs are returned in float32)."""
    remat: bool = False
    """Gradient checkpointing: recompute each encoder layer in the backward pass."""

    def __post_init__(self) -> None:
        _check_activation(self.hidden_act, "CLIPVisionConfig")
        for name in ("image_size", "patch_size"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(
                    f"CLIPVisionConfig.{name} must be one int (square), got {getattr(self, name)!r}"
                )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIPVisionConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPVisionConfig: hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def vit_l14(cls, **overrides: Any) -> CLIPVisionConfig:
        """openai/clip-vit-large-patch14's vision tower with its 768-d projection."""
        return cls(**overrides)

    @classmethod
    def vit_h14(cls, **overrides: Any) -> CLIPVisionConfig:
        """laion/CLIP-ViT-H-14-laion2B-s32B-b79K's vision tower with its 1024-d projection."""
        return cls(
            **{
                "hidden_size": 1280,
                "intermediate_size": 5120,
                "num_hidden_layers": 32,
                "num_attention_heads": 16,
                "hidden_act": "gelu",
                "projection_dim": 1024,
                **overrides,
            }
        )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> CLIPVisionConfig:
        """Reads a transformers ``CLIPVisionConfig`` dict; ``overrides`` set our own fields (dtype, remat)."""
        return _from_dict(cls, config, "clip vision", **overrides)


# --------------------------------------------------------------------------------------------------------------
# The shared transformer encoder.


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with biased q / k / v / out projections."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, dtype: Any):
        self.heads = heads
        self.q_proj = layers.dense(dim, dim, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
        self.k_proj = layers.dense(dim, dim, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
        self.v_proj = layers.dense(dim, dim, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
        self.out_proj = layers.dense(dim, dim, rngs=rngs, axes=("heads", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: (batch, seq, dim); mask broadcastable to (batch, heads, seq, seq), True = attend."""

        def split_heads(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:-1], self.heads, t.shape[-1] // self.heads)

        out = layers.attention(
            split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x)), mask=mask
        )
        return self.out_proj(out.reshape(x.shape))


class CLIPMLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, hidden_act: str, *, rngs: nnx.Rngs, dtype: Any):
        self.activation = ACTIVATIONS[hidden_act]
        self.fc1 = layers.dense(dim, hidden, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
        self.fc2 = layers.dense(hidden, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., dim) -> (..., dim)."""
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LayerNorm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig, *, rngs: nnx.Rngs):
        c = config
        self.self_attn = CLIPAttention(c.hidden_size, c.num_attention_heads, rngs=rngs, dtype=c.dtype)
        self.layer_norm1 = layers.layer_norm(c.hidden_size, eps=c.layer_norm_eps, rngs=rngs, dtype=c.dtype)
        self.mlp = CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act, rngs=rngs, dtype=c.dtype)
        self.layer_norm2 = layers.layer_norm(c.hidden_size, eps=c.layer_norm_eps, rngs=rngs, dtype=c.dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: (batch, seq, dim) -> (batch, seq, dim)."""
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """The stack of encoder layers."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.layers = nnx.List([CLIPEncoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: (batch, seq, dim) -> (batch, seq, dim)."""
        for layer in self.layers:
            x = layers.remat_call(layer, x, mask, enabled=self.remat)
        return x


# --------------------------------------------------------------------------------------------------------------
# Text tower.


class CLIPTextOutput(NamedTuple):
    last_hidden_state: jax.Array
    """(batch, seq, hidden_size) after final_layer_norm: Stable Diffusion's conditioning."""
    pooler_output: jax.Array
    """(batch, hidden_size): last_hidden_state at the EOS position (see CLIPTextConfig.eos_token_id)."""
    text_embeds: jax.Array | None
    """(batch, projection_dim): text_projection(pooler_output), when the model has a projection."""


class CLIPTextEmbeddings(nnx.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        c = config
        self.token_embedding = layers.embed(c.vocab_size, c.hidden_size, rngs=rngs, dtype=c.dtype)
        self.position_embedding = layers.embed(
            c.max_position_embeddings, c.hidden_size, rngs=rngs, dtype=c.dtype
        )

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """input_ids: (batch, seq) int -> (batch, seq, hidden_size); positions 0..seq-1."""
        return (
            self.token_embedding(input_ids) + self.position_embedding(jnp.arange(input_ids.shape[-1]))[None]
        )


class CLIPTextTransformer(nnx.Module):
    """Embeddings -> causal encoder -> final LayerNorm, and EOS pooling."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config, rngs=rngs)
        self.encoder = CLIPEncoder(config, rngs=rngs)
        self.final_layer_norm = layers.layer_norm(
            config.hidden_size, eps=config.layer_norm_eps, rngs=rngs, dtype=config.dtype
        )

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """input_ids: (batch, seq) int, seq <= max_position_embeddings; attention_mask: (batch, seq), 1 for
        real tokens and 0 for padding keys (optional: causality already hides right padding from real tokens).
        Returns (last_hidden_state (batch, seq, hidden), pooled (batch, hidden)), float32."""
        seq = input_ids.shape[-1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"{seq} tokens exceed max_position_embeddings={self.config.max_position_embeddings}"
            )
        mask = jnp.tril(jnp.ones((seq, seq), bool))[None, None]  # (1, 1, query, key)
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        hidden = self.encoder(self.embeddings(input_ids), mask)
        hidden = self.final_layer_norm(hidden).astype(jnp.float32)
        if self.config.eos_token_id == 2:
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            eos = jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)
        return hidden, jnp.take_along_axis(hidden, eos[:, None, None], axis=1)[:, 0]


class CLIPTextModel(nnx.Module):
    """transformers' CLIPTextModel, or CLIPTextModelWithProjection when ``config.with_projection``."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, rngs=rngs)
        self.text_projection = (
            layers.dense(
                config.hidden_size,
                config.projection_dim,
                rngs=rngs,
                use_bias=False,
                axes=("embed", "mlp"),
                dtype=config.dtype,
            )
            if config.with_projection
            else None
        )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> CLIPTextOutput:
        """input_ids: (batch, seq) int; attention_mask: (batch, seq) or None. See :class:`CLIPTextOutput`."""
        hidden, pooled = self.text_model(input_ids, attention_mask)
        embeds = None
        if self.text_projection is not None:
            embeds = self.text_projection(pooled.astype(self.config.dtype)).astype(jnp.float32)
        return CLIPTextOutput(hidden, pooled, embeds)


# --------------------------------------------------------------------------------------------------------------
# Vision tower.


class CLIPVisionOutput(NamedTuple):
    last_hidden_state: jax.Array
    """(batch, 1 + patches, hidden_size), before post_layernorm (as transformers)."""
    pooler_output: jax.Array
    """(batch, hidden_size): post_layernorm of the class token."""
    image_embeds: jax.Array
    """(batch, projection_dim): visual_projection(pooler_output)."""


class CLIPVisionEmbeddings(nnx.Module):
    """Non-overlapping patch projection, a learned class token in front, learned position embeddings."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        c = config
        self.class_embedding = layers.param((c.hidden_size,), ("embed",), rngs=rngs)
        self.patch_embedding = layers.conv(
            c.num_channels,
            c.hidden_size,
            c.patch_size,
            stride=c.patch_size,
            padding=0,
            use_bias=False,
            rngs=rngs,
            dtype=c.dtype,
        )
        self.position_embedding = layers.embed(c.num_positions, c.hidden_size, rngs=rngs, dtype=c.dtype)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values: (batch, image_size, image_size, channels) -> (batch, 1 + patches, hidden_size)."""
        patches = self.patch_embedding(pixel_values)
        b, gh, gw, d = patches.shape
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, d))
        tokens = jnp.concatenate([cls, patches.reshape(b, gh * gw, d)], axis=1)  # row-major patches, as torch
        return tokens + self.position_embedding(jnp.arange(tokens.shape[1]))[None]


class CLIPVisionTransformer(nnx.Module):
    """Patch embeddings -> pre_layrnorm (transformers' spelling) -> encoder; pooled = post_layernorm(class token)."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(c, rngs=rngs)
        self.pre_layrnorm = layers.layer_norm(c.hidden_size, eps=c.layer_norm_eps, rngs=rngs, dtype=c.dtype)
        self.encoder = CLIPEncoder(c, rngs=rngs)
        self.post_layernorm = layers.layer_norm(c.hidden_size, eps=c.layer_norm_eps, rngs=rngs, dtype=c.dtype)

    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixel_values: (batch, image_size, image_size, channels), normalised as CLIP's processor does.
        Returns (last_hidden_state (batch, 1 + patches, hidden), pooled (batch, hidden)), float32."""
        size = self.config.image_size
        if pixel_values.shape[1:3] != (size, size):
            raise ValueError(f"images of {pixel_values.shape[1:3]} pixels; this CLIP takes {size} x {size}")
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values.astype(self.config.dtype))))
        return hidden.astype(jnp.float32), self.post_layernorm(hidden[:, 0]).astype(jnp.float32)


class CLIPVisionModelWithProjection(nnx.Module):
    """transformers' CLIPVisionModelWithProjection."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = CLIPVisionTransformer(config, rngs=rngs)
        self.visual_projection = layers.dense(
            config.hidden_size,
            config.projection_dim,
            rngs=rngs,
            use_bias=False,
            axes=("embed", "mlp"),
            dtype=config.dtype,
        )

    def __call__(self, pixel_values: jax.Array) -> CLIPVisionOutput:
        """pixel_values: (batch, image_size, image_size, channels). See :class:`CLIPVisionOutput`."""
        hidden, pooled = self.vision_model(pixel_values)
        embeds = self.visual_projection(pooled.astype(self.config.dtype)).astype(jnp.float32)
        return CLIPVisionOutput(hidden, pooled, embeds)


# --------------------------------------------------------------------------------------------------------------
# Both towers (CLIP scores).


class CLIPModel(nnx.Module):
    """transformers' CLIPModel: both towers, their projections and the learned logit scale."""

    def __init__(self, text: CLIPTextConfig, vision: CLIPVisionConfig, *, rngs: nnx.Rngs):
        if text.projection_dim != vision.projection_dim:
            raise ValueError(
                f"text projection_dim {text.projection_dim} != vision projection_dim {vision.projection_dim}"
            )
        self.text_config, self.vision_config = text, vision
        self.text_model = CLIPTextTransformer(text, rngs=rngs)
        self.vision_model = CLIPVisionTransformer(vision, rngs=rngs)
        self.text_projection = layers.dense(
            text.hidden_size,
            text.projection_dim,
            rngs=rngs,
            use_bias=False,
            axes=("embed", "mlp"),
            dtype=text.dtype,
        )
        self.visual_projection = layers.dense(
            vision.hidden_size,
            vision.projection_dim,
            rngs=rngs,
            use_bias=False,
            axes=("embed", "mlp"),
            dtype=vision.dtype,
        )
        # CLIP's initial temperature log(1 / 0.07); checkpoints overwrite it.
        self.logit_scale = layers.param((), (), rngs=rngs, init=nnx.initializers.constant(2.6592))

    def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids: (batch, seq) int -> unnormalised text embeddings (batch, projection_dim) float32."""
        _, pooled = self.text_model(input_ids, attention_mask)
        return self.text_projection(pooled.astype(self.text_config.dtype)).astype(jnp.float32)

    def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values: (batch, size, size, channels) -> unnormalised image embeddings (batch, projection_dim)."""
        _, pooled = self.vision_model(pixel_values)
        return self.visual_projection(pooled.astype(self.vision_config.dtype)).astype(jnp.float32)

    def __call__(
        self, input_ids: jax.Array, pixel_values: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """CLIP similarity logits_per_image: (images, texts) = exp(logit_scale) * cosine(image, text)."""
        text = self.get_text_features(input_ids, attention_mask)
        image = self.get_image_features(pixel_values)
        text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
        image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
        return jnp.exp(self.logit_scale[...]) * image @ text.T


# --------------------------------------------------------------------------------------------------------------
# Checkpoint conversion and loading.

# transformers 5 saves a plain CLIPTextModel / CLIPVisionModel without the tower prefix; older saves (every
# Stable Diffusion text_encoder among them), the *WithProjection classes and CLIPModel keep it.
TEXT_CONVERSION_RULES: tuple[Rule, ...] = (
    Rule(r"^(embeddings|encoder|final_layer_norm)\.(.*)$", r"text_model.\1.\2"),
    conversion.MIRROR,
)
"""transformers CLIPTextModel(WithProjection) names -> :class:`CLIPTextModel`."""

VISION_CONVERSION_RULES: tuple[Rule, ...] = (
    Rule(r"^(embeddings|pre_layrnorm|encoder|post_layernorm)\.(.*)$", r"vision_model.\1.\2"),
    conversion.MIRROR,
)
"""transformers CLIPVisionModelWithProjection names -> :class:`CLIPVisionModelWithProjection`."""

CONVERSION_RULES: tuple[Rule, ...] = (conversion.MIRROR,)
"""transformers CLIPModel names -> :class:`CLIPModel` (the trees mirror each other exactly)."""

IGNORED: tuple[str, ...] = (r"position_ids$",)
"""Buffers older transformers versions saved (``embeddings.position_ids``); positions are recomputed."""


def load_clip_text(
    folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False, place: Any = None
) -> CLIPTextModel:
    """Builds a :class:`CLIPTextModel` from a transformers CLIPTextModel(WithProjection) folder, e.g. a
    Stable Diffusion ``text_encoder`` (config.json + safetensors)."""
    folder = Path(folder)
    config = CLIPTextConfig.from_dict(conversion.read_config(folder), dtype=dtype, remat=remat)
    return conversion.load_module(
        lambda: CLIPTextModel(config, rngs=nnx.Rngs(0)),
        conversion.read_weights(folder, what="clip text encoder"),
        TEXT_CONVERSION_RULES,
        ignore=IGNORED,
        place=place,
        source=f"clip text {folder}",
    )


def load_clip_vision(
    folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False
) -> CLIPVisionModelWithProjection:
    """Builds a :class:`CLIPVisionModelWithProjection` from a transformers folder of that class."""
    folder = Path(folder)
    config = CLIPVisionConfig.from_dict(conversion.read_config(folder), dtype=dtype, remat=remat)
    return conversion.load_module(
        lambda: CLIPVisionModelWithProjection(config, rngs=nnx.Rngs(0)),
        conversion.read_weights(folder, what="clip vision encoder"),
        VISION_CONVERSION_RULES,
        ignore=IGNORED,
        source=f"clip vision {folder}",
    )


def load_clip_model(folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False) -> CLIPModel:
    """Builds a :class:`CLIPModel` from a transformers CLIPModel folder (e.g. PickScore's)."""
    folder = Path(folder)
    raw = conversion.read_config(folder)
    if "text_config" not in raw or "vision_config" not in raw:
        raise ConversionError(
            f"{folder}/config.json is not a CLIPModel config (no text_config / vision_config)"
        )
    projection = {"projection_dim": raw.get("projection_dim", 512)}
    text = CLIPTextConfig.from_dict(
        raw["text_config"], dtype=dtype, remat=remat, with_projection=True, **projection
    )
    vision = CLIPVisionConfig.from_dict(raw["vision_config"], dtype=dtype, remat=remat, **projection)
    return conversion.load_module(
        lambda: CLIPModel(text, vision, rngs=nnx.Rngs(0)),
        conversion.read_weights(folder, what="clip model"),
        CONVERSION_RULES,
        ignore=IGNORED,
        source=f"clip model {folder}",
    )
