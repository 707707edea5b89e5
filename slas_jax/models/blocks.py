"""Building blocks shared by the diffusers families (UNet, VAE, FLUX) in Flax NNX.

Activations are NHWC. Attribute names mirror diffusers' (``conv1``, ``time_emb_proj``, ``to_out.0``...), so
that each family's conversion rules map checkpoint tensors onto these modules' parameters unchanged.

- :func:`timestep_embedding`, :class:`TimestepEmbedding`: the UNet's and FLUX's time conditioning,
- :class:`ResnetBlock2D`, :class:`Downsample2D`, :class:`Upsample2D`, :class:`Attention`: the UNet's and the
  VAE's convolutional and attention blocks.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slas_jax.models import layers


def timestep_embedding(
    timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps, as diffusers' ``get_timestep_embedding``.

    timesteps: (batch,) -> (batch, dim) float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """Linear -> SiLU -> Linear on the sinusoidal embedding."""

    def __init__(self, in_features: int, dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.linear_1 = layers.dense(in_features, dim, rngs=rngs, dtype=dtype)
        self.linear_2 = layers.dense(dim, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, in_features) -> (batch, dim)."""
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class ResnetBlock2D(nnx.Module):
    """GroupNorm -> SiLU -> Conv -> (+ time embedding) -> GroupNorm -> SiLU -> Conv, plus a (1x1 conv) skip.

    ``temb_channels=None`` builds the unconditioned variant used by the VAE.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temb_channels: int | None,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        self.output_scale_factor = output_scale_factor
        self.norm1 = layers.group_norm(in_channels, groups, eps=eps, rngs=rngs, dtype=dtype)
        self.conv1 = layers.conv(in_channels, out_channels, 3, rngs=rngs, dtype=dtype)
        self.time_emb_proj = (
            layers.dense(temb_channels, out_channels, rngs=rngs, axes=("embed", "conv_out"), dtype=dtype)
            if temb_channels is not None
            else None
        )
        self.norm2 = layers.group_norm(out_channels, groups, eps=eps, rngs=rngs, dtype=dtype)
        self.conv2 = layers.conv(out_channels, out_channels, 3, rngs=rngs, dtype=dtype)
        self.conv_shortcut = (
            layers.conv(in_channels, out_channels, 1, rngs=rngs, dtype=dtype)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        """x: (batch, h, w, in_channels), temb: (batch, temb_channels) -> (batch, h, w, out_channels)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (skip + h) / self.output_scale_factor


class Downsample2D(nnx.Module):
    """Stride-2 3x3 conv. ``padding=0`` pads only bottom/right by one (the VAE encoder's convention)."""

    def __init__(self, channels: int, *, padding: int, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.padding = padding
        self.conv = layers.conv(channels, channels, 3, stride=2, padding=padding, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, h, w, c) -> (batch, ceil(h / 2), ceil(w / 2), c)."""
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize as PyTorch's ``F.interpolate(mode="nearest")``: source index floor(i * in / out).

    x: (batch, h, w, c) -> (batch, size[0], size[1], c).
    """
    if size == (2 * x.shape[1], 2 * x.shape[2]):  # the common case, as a broadcast rather than a gather
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(size[0]) * x.shape[1]) // size[0]
    cols = (jnp.arange(size[1]) * x.shape[2]) // size[1]
    return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
    """Nearest-neighbour upsampling (x2, or to an explicit size) followed by a 3x3 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.conv = layers.conv(channels, channels, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        """x: (batch, h, w, c) -> (batch, 2h, 2w, c), or (batch, *size, c) when ``size`` is given (the UNet
        passes the skip connection's size so that odd latent sizes round-trip)."""
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        return self.conv(upsample_nearest(x, size))


class Attention(nnx.Module):
    """Multi-head attention as diffusers' ``Attention`` (to_q / to_k / to_v / to_out.0).

    Self-attention when ``cross_attention_dim`` is None. ``norm_num_groups`` adds the GroupNorm that the VAE's
    mid-block attention applies to its input tokens.
    """

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        inner = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.group_norm = (
            layers.group_norm(query_dim, norm_num_groups, eps=eps, rngs=rngs, dtype=dtype)
            if norm_num_groups is not None
            else None
        )
        qkv_axes = ("embed", "heads")
        self.to_q = layers.dense(query_dim, inner, rngs=rngs, axes=qkv_axes, use_bias=bias, dtype=dtype)
        self.to_k = layers.dense(context_dim, inner, rngs=rngs, axes=qkv_axes, use_bias=bias, dtype=dtype)
        self.to_v = layers.dense(context_dim, inner, rngs=rngs, axes=qkv_axes, use_bias=bias, dtype=dtype)
        # A list so that the parameter path is diffusers' `to_out.0` (its `to_out.1` is a parameter-free dropout).
        self.to_out = nnx.List(
            [layers.dense(inner, query_dim, rngs=rngs, axes=("heads", "embed"), dtype=dtype)]
        )

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x: (batch, n, query_dim), context: (batch, m, cross_attention_dim) or None -> (batch, n, query_dim)."""
        if self.group_norm is not None:
            x = self.group_norm(x)
        context = x if context is None else context

        def split_heads(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:-1], self.heads, t.shape[-1] // self.heads)

        out = layers.attention(
            split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        )
        return self.to_out[0](out.reshape(*out.shape[:-2], -1))
