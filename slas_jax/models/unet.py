"""The Stable Diffusion 1.x / 2.x denoiser (diffusers ``UNet2DConditionModel``) in Flax NNX.

Activations are NHWC. The module tree mirrors diffusers' attribute names (``down_blocks.0.attentions.1.
transformer_blocks.0.attn2.to_k``...) so that a diffusers checkpoint converts through
:data:`CONVERSION_RULES` with one rename (the feed-forward's ``net.0`` / ``net.2``). The resnet, attention,
resampling and timestep blocks it shares with the VAE and FLUX live in :mod:`slas_jax.models.blocks`.

Supported: the SD1.x / SD2.x family (``CrossAttnDownBlock2D`` / ``DownBlock2D`` down blocks,
``UNetMidBlock2DCrossAttn``, ``CrossAttnUpBlock2D`` / ``UpBlock2D`` up blocks, conv or linear projections
in the transformers, per-block head counts and transformer depths). Anything else in a config.json (class
embeddings, added conditions, other block types) is refused by :meth:`UNetConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slas_jax.models import conversion, layers
from slas_jax.models.blocks import (
    Attention,
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Upsample2D,
    timestep_embedding,
)
from slas_jax.models.conversion import ConversionError, Rule

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# diffusers config keys whose only supported value is their default; anything else fails loudly rather
# than building a different network than the checkpoint's.
_UNSUPPORTED_UNLESS_DEFAULT: dict[str, Any] = {
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "dropout": 0.0,
    "act_fn": "silu",
    "num_attention_heads": None,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "projection_class_embeddings_input_dim": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "attention_type": "default",
    "cross_attention_norm": None,
}


def _per_block(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """diffusers' "int or one value per down block" convention, as a tuple of length ``n``."""
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or not all(isinstance(v, int) for v in values):
        raise ValueError(f"UNetConfig.{name} must be an int or {n} ints (one per down block), got {value!r}")
    return values


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Architecture of a :class:`UNet2DConditionModel` (field names follow diffusers' config.json).

    Per-block fields accept an int (same for every block) or one value per down block; they are stored as
    tuples indexed like ``down_block_types`` (up blocks use them reversed, as diffusers does).
    """

    sample_size: int | tuple[int, int] = 64
    """Latent size the model was trained at (informational: the model runs at any size)."""
    in_channels: int = 4
    """Channels of the latent input (4 for SD's VAE)."""
    out_channels: int = 4
    """Channels of the prediction (the latents' channels)."""
    flip_sin_to_cos: bool = True
    """Timestep embedding order: cos then sin when True (SD), sin then cos when False."""
    freq_shift: int = 0
    """``downscale_freq_shift`` of the sinusoidal timestep embedding."""
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    """One per resolution, highest first: "CrossAttnDownBlock2D" (resnets, each followed by a cross-attention
    Transformer2DModel) or "DownBlock2D" (resnets only)."""
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    """One per resolution, lowest first: "CrossAttnUpBlock2D" or "UpBlock2D" (as the down blocks)."""
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    """Channels of each down block (the up blocks mirror them); the first is also conv_in's output width and
    the timestep sinusoid's width."""
    layers_per_block: int | tuple[int, ...] = 2
    """Resnets per down block (up blocks have one more)."""
    transformer_layers_per_block: int | tuple[int, ...] = 1
    """BasicTransformerBlocks inside each Transformer2DModel of a block."""
    num_attention_heads: int | tuple[int, ...] = 8
    """Heads per block. diffusers stores this under the key ``attention_head_dim`` (a historical misnomer it
    keeps for compatibility: for this model it is the number of heads, head dim = channels // heads)."""
    cross_attention_dim: int | tuple[int, ...] = 768
    """Width of the text features the cross-attention reads, per block (768: SD1's CLIP ViT-L, 1024: SD2's
    OpenCLIP ViT-H)."""
    use_linear_projection: bool = False
    """Transformer2DModel proj_in / proj_out as Linear (SD2) instead of 1x1 Conv (SD1)."""
    downsample_padding: int = 1
    """Padding of the down blocks' stride-2 convs: 1 pads one pixel on every side, 0 one pixel at the bottom /
    right only."""
    mid_block_scale_factor: float = 1.0
    """The mid block's resnets divide their output (skip + residual) by this."""
    norm_num_groups: int = 32
    """Groups of every GroupNorm."""
    norm_eps: float = 1e-5
    """Epsilon of the resnets' and the output's GroupNorms (the transformers' GroupNorm always uses 1e-6, as
    diffusers')."""
    conv_in_kernel: int = 3
    """Kernel size of conv_in (latents -> block_out_channels[0])."""
    conv_out_kernel: int = 3
    """Kernel size of conv_out (block_out_channels[0] -> out_channels)."""
    time_embedding_dim: int | None = None
    """Width of the timestep embedding MLP; None: 4 x block_out_channels[0]."""
    prediction_type: str = "epsilon"
    """What the output means: "epsilon" (noise) or "v_prediction". The sampler interprets it."""
    dtype: Any = jnp.float32
    """Compute dtype (parameters stay float32; the output is returned in float32)."""
    remat: bool = False
    """Gradient checkpointing: recompute each resnet and transformer block in the backward pass."""

    def __post_init__(self) -> None:
        n = len(self.down_block_types)
        for name in (
            "layers_per_block",
            "transformer_layers_per_block",
            "num_attention_heads",
            "cross_attention_dim",
        ):
            object.__setattr__(self, name, _per_block(getattr(self, name), n, name))
        # JSON gives lists; tuples keep the frozen config hashable (it is part of the module's static graph).
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.sample_size, int):
            object.__setattr__(self, "sample_size", tuple(self.sample_size))
        if len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ValueError(
                f"UNetConfig: down_block_types, up_block_types and block_out_channels need the same length, got "
                f"{n}, {len(self.up_block_types)}, {len(self.block_out_channels)}"
            )
        bad = [t for t in self.down_block_types if t not in DOWN_BLOCK_TYPES] + [
            t for t in self.up_block_types if t not in UP_BLOCK_TYPES
        ]
        if bad:
            raise ValueError(
                f"UNetConfig: block type {bad[0]!r} is not supported (down: {DOWN_BLOCK_TYPES}, up: {UP_BLOCK_TYPES})"
            )
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"UNetConfig.prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}"
            )

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @classmethod
    def sd14(cls, **overrides: Any) -> UNetConfig:
        """CompVis/stable-diffusion-v1-4 ``unet/config.json`` (860M parameters, epsilon prediction)."""
        return cls(**overrides)

    @classmethod
    def sd15(cls, **overrides: Any) -> UNetConfig:
        """Stable Diffusion v1.5: the SD1.4 architecture."""
        return cls(**overrides)

    @classmethod
    def sd21(cls, **overrides: Any) -> UNetConfig:
        """stabilityai/stable-diffusion-2-1 (768 px, v-prediction, OpenCLIP-H text features of width 1024)."""
        return cls(
            **{
                "sample_size": 96,
                "num_attention_heads": (5, 10, 20, 20),
                "cross_attention_dim": 1024,
                "use_linear_projection": True,
                "prediction_type": "v_prediction",
                **overrides,
            }
        )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> UNetConfig:
        """Reads a diffusers ``unet/config.json`` dict; ``overrides`` set our own fields (dtype, remat,
        prediction_type, which lives in the scheduler's config). Unsupported settings raise ConversionError."""
        for key, default in _UNSUPPORTED_UNLESS_DEFAULT.items():
            value = config.get(key, default)
            if isinstance(value, list) and key == "only_cross_attention" and not any(value):
                continue
            if value != default:
                raise ConversionError(f"unet config: {key}={value!r} is not supported (only {default!r})")
        if config.get("norm_num_groups", 32) is None:
            raise ConversionError("unet config: norm_num_groups=None is not supported")
        # Our field names are diffusers' keys, except num_attention_heads (see its docstring) and the
        # runtime-only dtype / remat.
        keys = [
            f.name for f in dataclasses.fields(cls) if f.name not in ("num_attention_heads", "dtype", "remat")
        ]
        kwargs = {k: config[k] for k in keys if k in config}
        if "attention_head_dim" in config:
            kwargs["num_attention_heads"] = config["attention_head_dim"]
        try:
            return cls(**{**kwargs, **overrides})
        except (TypeError, ValueError) as e:
            raise ConversionError(f"unet config: {e}") from e


# --------------------------------------------------------------------------------------------------------------
# Transformer blocks.


class GEGLU(nnx.Module):
    """Linear to twice the width, then value * GELU(gate) (exact erf GELU, as torch's default)."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.proj = layers.dense(dim_in, 2 * dim_out, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., dim_in) -> (..., dim_out)."""
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """GEGLU to 4x width, then Linear back (diffusers' ``net.0`` / ``net.2``, renamed by CONVERSION_RULES)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.geglu = GEGLU(dim, 4 * dim, rngs=rngs, dtype=dtype)
        self.proj_out = layers.dense(4 * dim, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., dim) -> (..., dim)."""
        return self.proj_out(self.geglu(x))


class BasicTransformerBlock(nnx.Module):
    """Pre-LayerNorm self-attention, cross-attention to the text, and GEGLU feed-forward, each residual."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        self.norm1 = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, rngs=rngs, dtype=dtype)
        self.norm2 = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn2 = Attention(
            dim,
            heads=heads,
            dim_head=dim_head,
            cross_attention_dim=cross_attention_dim,
            rngs=rngs,
            dtype=dtype,
        )
        self.norm3 = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x: (batch, tokens, dim), context: (batch, seq, cross_attention_dim) -> (batch, tokens, dim)."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """GroupNorm -> proj_in -> BasicTransformerBlocks over the h*w tokens -> proj_out, plus the input."""

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        num_layers: int,
        cross_attention_dim: int,
        groups: int,
        use_linear_projection: bool,
        remat: bool,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        self.remat = remat
        self.norm = layers.group_norm(channels, groups, eps=1e-6, rngs=rngs, dtype=dtype)
        # A 1x1 conv and a Linear are the same map on NHWC; only the checkpoint's kernel layout differs.
        if use_linear_projection:
            self.proj_in = layers.dense(channels, channels, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
            self.proj_out = layers.dense(channels, channels, rngs=rngs, axes=("heads", "embed"), dtype=dtype)
        else:
            self.proj_in = layers.conv(channels, channels, 1, rngs=rngs, dtype=dtype)
            self.proj_out = layers.conv(channels, channels, 1, rngs=rngs, dtype=dtype)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    channels,
                    heads=heads,
                    dim_head=channels // heads,
                    cross_attention_dim=cross_attention_dim,
                    rngs=rngs,
                    dtype=dtype,
                )
                for _ in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x: (batch, h, w, c), context: (batch, seq, cross_attention_dim) -> (batch, h, w, c)."""
        b, h, w, c = x.shape
        tokens = self.proj_in(self.norm(x)).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            tokens = layers.remat_call(block, tokens, context, enabled=self.remat)
        return self.proj_out(tokens.reshape(b, h, w, c)) + x


# --------------------------------------------------------------------------------------------------------------
# UNet blocks.


def _resnet(
    config: UNetConfig, in_channels: int, out_channels: int, rngs: nnx.Rngs, output_scale_factor: float = 1.0
) -> ResnetBlock2D:
    """A time-conditioned resnet with the UNet's norm settings."""
    return ResnetBlock2D(
        in_channels,
        out_channels,
        temb_channels=config.time_embed_dim,
        groups=config.norm_num_groups,
        eps=config.norm_eps,
        output_scale_factor=output_scale_factor,
        rngs=rngs,
        dtype=config.dtype,
    )


def _transformer(config: UNetConfig, channels: int, block: int, rngs: nnx.Rngs) -> Transformer2DModel:
    """The Transformer2DModel of down block ``block`` (up blocks pass their mirrored index)."""
    return Transformer2DModel(
        channels,
        heads=config.num_attention_heads[block],
        num_layers=config.transformer_layers_per_block[block],
        cross_attention_dim=config.cross_attention_dim[block],
        groups=config.norm_num_groups,
        use_linear_projection=config.use_linear_projection,
        remat=config.remat,
        rngs=rngs,
        dtype=config.dtype,
    )


class DownBlock2D(nnx.Module):
    """Resnets, each optionally followed by a Transformer2DModel (CrossAttnDownBlock2D), then a downsample."""

    def __init__(
        self,
        config: UNetConfig,
        index: int,
        in_channels: int,
        out_channels: int,
        *,
        cross_attention: bool,
        rngs: nnx.Rngs,
    ):
        c = config
        n = c.layers_per_block[index]
        self.remat = c.remat
        self.resnets = nnx.List(
            [_resnet(c, in_channels if i == 0 else out_channels, out_channels, rngs) for i in range(n)]
        )
        self.attentions = (
            nnx.List([_transformer(c, out_channels, index, rngs) for _ in range(n)])
            if cross_attention
            else None
        )
        is_last = index == len(c.block_out_channels) - 1
        self.downsamplers = (
            None
            if is_last
            else nnx.List(
                [Downsample2D(out_channels, padding=c.downsample_padding, rngs=rngs, dtype=c.dtype)]
            )
        )

    def __call__(
        self, x: jax.Array, temb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        """x: (batch, h, w, c_in) -> (batch, h', w', c_out) and the skip activations for the up path."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = layers.remat_call(resnet, x, temb, enabled=self.remat)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock2D(nnx.Module):
    """Resnets on [x, skip] concatenations, each optionally followed by a Transformer2DModel
    (CrossAttnUpBlock2D), then an upsample (all but the last block)."""

    def __init__(
        self,
        config: UNetConfig,
        index: int,
        prev_output_channels: int,
        *,
        cross_attention: bool,
        rngs: nnx.Rngs,
    ):
        c = config
        n_blocks = len(c.block_out_channels)
        down_index = n_blocks - 1 - index  # per-block settings are indexed like the down blocks
        out_channels = c.block_out_channels[down_index]
        skip_in = c.block_out_channels[max(down_index - 1, 0)]  # what the matching down block received
        n = c.layers_per_block[down_index] + 1
        self.remat = c.remat
        self.resnets = nnx.List(
            [
                _resnet(
                    c,
                    (prev_output_channels if i == 0 else out_channels)
                    + (skip_in if i == n - 1 else out_channels),
                    out_channels,
                    rngs,
                )
                for i in range(n)
            ]
        )
        self.attentions = (
            nnx.List([_transformer(c, out_channels, down_index, rngs) for _ in range(n)])
            if cross_attention
            else None
        )
        self.upsamplers = (
            None if index == n_blocks - 1 else nnx.List([Upsample2D(out_channels, rngs=rngs, dtype=c.dtype)])
        )

    def __call__(
        self,
        x: jax.Array,
        skips: list[jax.Array],
        temb: jax.Array,
        context: jax.Array,
        size: tuple[int, int] | None,
    ) -> jax.Array:
        """x: (batch, h, w, c); consumes ``skips`` from the end; upsamples to ``size`` (batch, *size, c_out)."""
        for i, resnet in enumerate(self.resnets):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = layers.remat_call(resnet, x, temb, enabled=self.remat)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class UNetMidBlock2DCrossAttn(nnx.Module):
    """Resnet -> Transformer2DModel -> Resnet at the lowest resolution."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        c = config
        channels = c.block_out_channels[-1]
        last = len(c.block_out_channels) - 1
        self.remat = c.remat
        self.resnets = nnx.List(
            [_resnet(c, channels, channels, rngs, c.mid_block_scale_factor) for _ in range(2)]
        )
        self.attentions = nnx.List([_transformer(c, channels, last, rngs)])

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        """x: (batch, h, w, c) -> (batch, h, w, c)."""
        x = layers.remat_call(self.resnets[0], x, temb, enabled=self.remat)
        x = self.attentions[0](x, context)
        return layers.remat_call(self.resnets[1], x, temb, enabled=self.remat)


class UNet2DConditionModel(nnx.Module):
    """The text-conditioned denoiser of Stable Diffusion 1.x / 2.x."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        channels = c.block_out_channels
        self.conv_in = layers.conv(c.in_channels, channels[0], c.conv_in_kernel, rngs=rngs, dtype=c.dtype)
        self.time_embedding = TimestepEmbedding(channels[0], c.time_embed_dim, rngs=rngs, dtype=c.dtype)
        self.down_blocks = nnx.List(
            [
                DownBlock2D(
                    c,
                    i,
                    channels[max(i - 1, 0)],
                    channels[i],
                    cross_attention=kind == "CrossAttnDownBlock2D",
                    rngs=rngs,
                )
                for i, kind in enumerate(c.down_block_types)
            ]
        )
        self.mid_block = UNetMidBlock2DCrossAttn(c, rngs=rngs)
        reversed_channels = channels[::-1]
        self.up_blocks = nnx.List(
            [
                UpBlock2D(
                    c,
                    i,
                    reversed_channels[max(i - 1, 0)],
                    cross_attention=kind == "CrossAttnUpBlock2D",
                    rngs=rngs,
                )
                for i, kind in enumerate(c.up_block_types)
            ]
        )
        self.conv_norm_out = layers.group_norm(
            channels[0], c.norm_num_groups, eps=c.norm_eps, rngs=rngs, dtype=c.dtype
        )
        self.conv_out = layers.conv(channels[0], c.out_channels, c.conv_out_kernel, rngs=rngs, dtype=c.dtype)

    def __call__(
        self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array
    ) -> jax.Array:
        """Predicts noise (or v, see ``config.prediction_type``).

        sample: (batch, h, w, in_channels) latents; timesteps: (batch,) or scalar, in the scheduler's units
        (0..999 for SD); encoder_hidden_states: (batch, seq, cross_attention_dim) text features.
        Returns (batch, h, w, out_channels) float32.
        """
        c = self.config
        batch = sample.shape[0]
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))
        t_emb = timestep_embedding(
            t, c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift
        )
        temb = self.time_embedding(t_emb.astype(c.dtype))
        context = encoder_hidden_states.astype(c.dtype)

        x = self.conv_in(sample.astype(c.dtype))
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            # Upsample to the next skip's size so that sizes not divisible by 2**depth round-trip (diffusers'
            # `upsample_size`); for divisible sizes this is exactly x2.
            size = (skips[-1].shape[1], skips[-1].shape[2]) if skips else None
            x = block(x, block_skips, temb, context, size)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return x.astype(jnp.float32)


# --------------------------------------------------------------------------------------------------------------
# Checkpoint conversion.

CONVERSION_RULES: tuple[Rule, ...] = (
    Rule(r"^(.*)\.ff\.net\.0\.proj\.(weight|bias)$", r"\1.ff.geglu.proj.\2"),
    Rule(r"^(.*)\.ff\.net\.2\.(weight|bias)$", r"\1.ff.proj_out.\2"),
    conversion.MIRROR,
)
"""diffusers UNet2DConditionModel names -> ours; 1x1-conv / Linear layouts are handled by the leaf rule."""

IGNORED: tuple[str, ...] = ()
"""The diffusers UNet checkpoint has no buffers: every tensor must be consumed."""


def _prediction_type_beside(folder: Path) -> dict[str, Any]:
    """prediction_type from ``../scheduler/scheduler_config.json`` when ``folder`` sits in a pipeline folder."""
    scheduler = folder.parent / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        return {"prediction_type": json.loads(scheduler.read_text()).get("prediction_type", "epsilon")}
    return {}


def load_unet(
    folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False, place: Any = None
) -> UNet2DConditionModel:
    """Builds a :class:`UNet2DConditionModel` from a diffusers ``unet`` folder (config.json + safetensors).

    ``prediction_type`` comes from the sibling ``scheduler/scheduler_config.json`` when there is one
    (diffusers keeps it there), else "epsilon".
    """
    folder = Path(folder)
    config = UNetConfig.from_dict(
        {**_prediction_type_beside(folder), **conversion.read_config(folder)}, dtype=dtype, remat=remat
    )
    tensors = conversion.read_weights(folder, what="unet")
    return conversion.load_module(
        lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0)),
        tensors,
        CONVERSION_RULES,
        ignore=IGNORED,
        place=place,
        source=f"unet {folder}",
    )
