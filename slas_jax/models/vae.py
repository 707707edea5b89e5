"""The KL autoencoder of latent diffusion (diffusers ``AutoencoderKL``) in Flax NNX: SD1.x/2.x and FLUX.

Images and latents are NHWC; images in [-1, 1]. The module tree mirrors diffusers' names, so a diffusers
``vae`` folder converts through :data:`CONVERSION_RULES` (which also accept the older attention names
``query`` / ``key`` / ``value`` / ``proj_attn`` and their 1x1-conv shaped weights). The encoder returns the
mean and log-variance of the latent Gaussian; the latent scaling of the diffusion model
(``(z - shift_factor) * scaling_factor``) is applied by :meth:`AutoencoderKL.latents_from_image` and undone by
:meth:`AutoencoderKL.image_from_latents`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.models import conversion, layers
from slas_jax.models.blocks import Attention, Downsample2D, ResnetBlock2D, Upsample2D
from slas_jax.models.conversion import ConversionError, Rule

# diffusers config keys whose only supported value is their default.
_UNSUPPORTED_UNLESS_DEFAULT: dict[str, Any] = {"act_fn": "silu", "latents_mean": None, "latents_std": None}

_EPS = 1e-6  # every norm of diffusers' Encoder / Decoder uses this epsilon, whatever the config says


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Architecture and latent scaling of an :class:`AutoencoderKL` (field names follow diffusers' config.json)."""

    in_channels: int = 3
    """Channels of the input images (3: RGB)."""
    out_channels: int = 3
    """Channels of the decoded images (3: RGB)."""
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    """Encoder blocks, highest resolution first; only "DownEncoderBlock2D" is supported."""
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    """Decoder blocks, lowest resolution first; only "UpDecoderBlock2D" is supported."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels of each encoder block (the decoder mirrors them); n blocks downscale by 2 ** (n - 1)."""
    layers_per_block: int = 2
    """Resnets per encoder block (decoder blocks have one more)."""
    latent_channels: int = 4
    """Channels of the latent (4 for SD, 16 for FLUX.1)."""
    norm_num_groups: int = 32
    """Groups of every GroupNorm."""
    sample_size: int | tuple[int, int] = 512
    """Image size the VAE was trained at (informational: it runs at any multiple of ``downscale``)."""
    scaling_factor: float = 0.18215
    """Scale of the latents given to the diffusion model (0.18215 for SD1.x, 0.3611 for FLUX.1)."""
    shift_factor: float = 0.0
    """Latents given to the diffusion model are (z - shift_factor) * scaling_factor (config null -> 0)."""
    use_quant_conv: bool = True
    """A 1x1 conv on the encoder's moments (SD: yes; FLUX: no)."""
    use_post_quant_conv: bool = True
    """A 1x1 conv on the latent before the decoder (SD: yes; FLUX: no)."""
    mid_block_add_attention: bool = True
    """Single-head self-attention between the two resnets of the encoder's and the decoder's mid blocks."""
    dtype: Any = jnp.float32
    """Compute dtype (parameters stay float32; outputs are returned in float32)."""
    remat: bool = False
    """Gradient checkpointing: recompute each resnet and attention block in the backward pass."""

    def __post_init__(self) -> None:
        # JSON gives lists; tuples keep the frozen config hashable (it is part of the module's static graph).
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.sample_size, int):
            object.__setattr__(self, "sample_size", tuple(self.sample_size))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"VAEConfig: down_block_types, up_block_types and block_out_channels need the same length, got "
                f"{len(self.down_block_types)}, {len(self.up_block_types)}, {n}"
            )
        bad = [t for t in self.down_block_types if t != "DownEncoderBlock2D"] + [
            t for t in self.up_block_types if t != "UpDecoderBlock2D"
        ]
        if bad:
            raise ValueError(
                f"VAEConfig: block type {bad[0]!r} is not supported (DownEncoderBlock2D / UpDecoderBlock2D)"
            )

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD and FLUX)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def sd14(cls, **overrides: Any) -> VAEConfig:
        """CompVis/stable-diffusion-v1-4 ``vae/config.json`` (83.7M parameters, 4 latent channels)."""
        return cls(**overrides)

    @classmethod
    def flux1(cls, **overrides: Any) -> VAEConfig:
        """black-forest-labs/FLUX.1 ``vae/config.json``: 16 latent channels, no quant convs, shifted
        latents."""
        return cls(
            **{
                "latent_channels": 16,
                "sample_size": 1024,
                "scaling_factor": 0.3611,
                "shift_factor": 0.1159,
                "use_quant_conv": False,
                "use_post_quant_conv": False,
                **overrides,
            }
        )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> VAEConfig:
        """Reads a diffusers ``vae/config.json`` dict; ``overrides`` set our own fields (dtype, remat).
        Unsupported settings raise ConversionError."""
        for key, default in _UNSUPPORTED_UNLESS_DEFAULT.items():
            if config.get(key, default) != default:
                raise ConversionError(
                    f"vae config: {key}={config[key]!r} is not supported (only {default!r})"
                )
        keys = [f.name for f in dataclasses.fields(cls) if f.name not in ("dtype", "remat")]
        kwargs = {k: config[k] for k in keys if k in config}
        if kwargs.get("shift_factor") is None:
            kwargs.pop("shift_factor", None)
        try:
            return cls(**{**kwargs, **overrides})
        except (TypeError, ValueError) as e:
            raise ConversionError(f"vae config: {e}") from e


class UNetMidBlock2D(nnx.Module):
    """Resnet -> (single-head spatial self-attention, residual) -> Resnet, without time conditioning."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        c = config
        channels = c.block_out_channels[-1]
        self.remat = c.remat
        self.resnets = nnx.List([_resnet(c, channels, channels, rngs) for _ in range(2)])
        self.attentions = (
            nnx.List(
                [
                    Attention(
                        channels,
                        heads=1,
                        dim_head=channels,
                        bias=True,
                        norm_num_groups=c.norm_num_groups,
                        eps=_EPS,
                        rngs=rngs,
                        dtype=c.dtype,
                    )
                ]
            )
            if c.mid_block_add_attention
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, h, w, c) -> (batch, h, w, c)."""
        x = layers.remat_call(self.resnets[0], x, enabled=self.remat)
        if self.attentions is not None:
            b, h, w, c = x.shape
            x = x + layers.remat_call(self.attentions[0], x.reshape(b, h * w, c), enabled=self.remat).reshape(
                x.shape
            )
        return layers.remat_call(self.resnets[1], x, enabled=self.remat)


def _resnet(config: VAEConfig, in_channels: int, out_channels: int, rngs: nnx.Rngs) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels,
        out_channels,
        temb_channels=None,
        groups=config.norm_num_groups,
        eps=_EPS,
        rngs=rngs,
        dtype=config.dtype,
    )


class DownEncoderBlock2D(nnx.Module):
    """Resnets, then (all but the last block) a stride-2 conv padded on the bottom / right only."""

    def __init__(self, config: VAEConfig, index: int, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.resnets = nnx.List(
            [
                _resnet(config, in_channels if i == 0 else out_channels, out_channels, rngs)
                for i in range(config.layers_per_block)
            ]
        )
        is_last = index == len(config.block_out_channels) - 1
        self.downsamplers = (
            None
            if is_last
            else nnx.List([Downsample2D(out_channels, padding=0, rngs=rngs, dtype=config.dtype)])
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, h, w, c_in) -> (batch, h / 2, w / 2, c_out) (no downsampling in the last block)."""
        for resnet in self.resnets:
            x = layers.remat_call(resnet, x, enabled=self.remat)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nnx.Module):
    """Resnets, then (all but the last block) nearest x2 upsampling and a conv."""

    def __init__(self, config: VAEConfig, index: int, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.resnets = nnx.List(
            [
                _resnet(config, in_channels if i == 0 else out_channels, out_channels, rngs)
                for i in range(config.layers_per_block + 1)
            ]
        )
        is_last = index == len(config.block_out_channels) - 1
        self.upsamplers = (
            None if is_last else nnx.List([Upsample2D(out_channels, rngs=rngs, dtype=config.dtype)])
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, h, w, c_in) -> (batch, 2h, 2w, c_out) (no upsampling in the last block)."""
        for resnet in self.resnets:
            x = layers.remat_call(resnet, x, enabled=self.remat)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nnx.Module):
    """Image -> 2 x latent_channels moments (mean and log-variance, before quant_conv)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        c = config
        channels = c.block_out_channels
        self.conv_in = layers.conv(c.in_channels, channels[0], 3, rngs=rngs, dtype=c.dtype)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(c, i, channels[max(i - 1, 0)], channels[i], rngs=rngs)
                for i in range(len(channels))
            ]
        )
        self.mid_block = UNetMidBlock2D(c, rngs=rngs)
        self.conv_norm_out = layers.group_norm(
            channels[-1], c.norm_num_groups, eps=_EPS, rngs=rngs, dtype=c.dtype
        )
        self.conv_out = layers.conv(channels[-1], 2 * c.latent_channels, 3, rngs=rngs, dtype=c.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, h, w, in_channels) -> (batch, h / f, w / f, 2 * latent_channels), f = config.downscale."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latent -> image."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        c = config
        reversed_channels = c.block_out_channels[::-1]
        self.conv_in = layers.conv(c.latent_channels, reversed_channels[0], 3, rngs=rngs, dtype=c.dtype)
        self.mid_block = UNetMidBlock2D(c, rngs=rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(c, i, reversed_channels[max(i - 1, 0)], reversed_channels[i], rngs=rngs)
                for i in range(len(reversed_channels))
            ]
        )
        self.conv_norm_out = layers.group_norm(
            reversed_channels[-1], c.norm_num_groups, eps=_EPS, rngs=rngs, dtype=c.dtype
        )
        self.conv_out = layers.conv(reversed_channels[-1], c.out_channels, 3, rngs=rngs, dtype=c.dtype)

    def __call__(self, z: jax.Array) -> jax.Array:
        """z: (batch, h, w, latent_channels) -> (batch, h * f, w * f, out_channels), f = config.downscale."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """diffusers' AutoencoderKL: ``encode`` to the latent Gaussian, ``decode`` back to pixels."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.encoder = Encoder(c, rngs=rngs)
        self.decoder = Decoder(c, rngs=rngs)
        moments = 2 * c.latent_channels
        self.quant_conv = (
            layers.conv(moments, moments, 1, rngs=rngs, dtype=c.dtype) if c.use_quant_conv else None
        )
        self.post_quant_conv = (
            layers.conv(c.latent_channels, c.latent_channels, 1, rngs=rngs, dtype=c.dtype)
            if c.use_post_quant_conv
            else None
        )

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: (batch, h, w, in_channels) in [-1, 1] -> (mean, logvar), each (batch, h / f, w / f,
        latent_channels) float32, unscaled; logvar clipped to [-30, 20] as diffusers does."""
        moments = self.encoder(images.astype(self.config.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """z: (batch, h, w, latent_channels) unscaled latents -> (batch, h * f, w * f, out_channels) float32,
        nominally in [-1, 1] (not clipped)."""
        z = z.astype(self.config.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def latents_from_image(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Diffusion-model latents of ``images`` (batch, h, w, c) in [-1, 1]: the posterior mean, or a sample
        when a PRNG ``key`` is given, then ``(z - shift_factor) * scaling_factor``. -> (batch, h/f, w/f, latent)."""
        mean, logvar = self.encode(images)
        z = (
            mean
            if key is None
            else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        )
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def image_from_latents(self, latents: jax.Array) -> jax.Array:
        """Inverse of :meth:`latents_from_image`'s scaling, then decode: (batch, h, w, latent) -> images
        (batch, h * f, w * f, out_channels) float32 in about [-1, 1]."""
        return self.decode(latents / self.config.scaling_factor + self.config.shift_factor)


# --------------------------------------------------------------------------------------------------------------
# Checkpoint conversion.


def _attention_kernel(array: np.ndarray) -> np.ndarray:
    """Mid-block attention projection weight -> our (in, out) kernel; older conversions stored it as a 1x1
    conv (out, in, 1, 1)."""
    return (array[:, :, 0, 0] if array.ndim == 4 else array).T


_ATTN = r"^((?:encoder|decoder)\.mid_block\.attentions\.0)"
_ATTN_NAMES = (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0"))  # (old, new)
CONVERSION_RULES: tuple[Rule, ...] = (
    *(
        Rule(rf"{_ATTN}\.(?:{old}|{re.escape(new)})\.weight$", rf"\1.{new}.kernel", _attention_kernel)
        for old, new in _ATTN_NAMES
    ),
    *(Rule(rf"{_ATTN}\.{old}\.bias$", rf"\1.{new}.bias") for old, new in _ATTN_NAMES),
    conversion.MIRROR,
)
"""diffusers AutoencoderKL names -> ours, accepting the deprecated attention names of older vae folders."""

IGNORED: tuple[str, ...] = ()
"""The diffusers VAE checkpoint has no buffers: every tensor must be consumed."""


def load_vae(
    folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False, place: Any = None
) -> AutoencoderKL:
    """Builds an :class:`AutoencoderKL` from a diffusers ``vae`` folder (config.json + safetensors)."""
    folder = Path(folder)
    config = VAEConfig.from_dict(conversion.read_config(folder), dtype=dtype, remat=remat)
    return conversion.load_module(
        lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)),
        conversion.read_weights(folder, what="vae"),
        CONVERSION_RULES,
        ignore=IGNORED,
        place=place,
        source=f"vae {folder}",
    )
