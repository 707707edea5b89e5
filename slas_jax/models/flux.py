"""The FLUX.1 denoiser (diffusers ``FluxTransformer2DModel``, an MMDiT) in Flax NNX.

Data flow, with D = heads x head_dim (3072 for FLUX.1):

```
image tokens (b, img_seq, in_ch) ── x_embedder ───────┐
T5 features (b, txt_seq, 4096) ──── context_embedder ─┤  temb = time_text_embed(1000 t, 1000 g, pooled)
                                                      ├─ double-stream blocks (one weight set per stream)
                                                      ├─ [text; image] ─ single-stream blocks ─ image part
                                                      └─ norm_out (adaptive LN) ─ proj_out ─ (b, img_seq, out)
```
Rotary position embedding over 3-axis ids (text tokens all zero; image tokens (0, row, col)) rotates
queries and keys in every attention layer.

The module tree mirrors diffusers' names (``transformer_blocks.attn.add_q_proj``...) with two differences,
both handled by :data:`CONVERSION_RULES`: each block stack is one scanned module whose parameters have a
leading ``layers`` axis (``transformer_blocks.{i}.X`` -> ``transformer_blocks.X@{i}``), and the feed-forward's
``net.0.proj`` / ``net.2`` are ``proj_in`` / ``proj_out``. diffusers concatenates text and image tokens inside
every single-stream block and splits them again at its end; here that happens once around the stack (the same
arithmetic).

:func:`pack_latents`, :func:`unpack_latents`, :func:`image_ids` and :func:`text_ids` build the inputs as
diffusers' ``FluxPipeline`` does (latents here are NHWC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.models import conversion, layers
from slas_jax.models.blocks import TimestepEmbedding, timestep_embedding
from slas_jax.models.conversion import ConversionError, Rule

ROPE_THETA = 10000.0
TIME_PROJ_DIM = 256
"""Width of the sinusoidal timestep / guidance embedding fed to the embedders' first Linear."""
MLP_RATIO = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class FluxConfig:
    """Architecture of a :class:`FluxTransformer2DModel` (field names follow diffusers' config.json)."""

    in_channels: int = 64
    """Width of a packed latent token: 4 x the VAE's latent channels (2x2 patches)."""
    out_channels: int | None = None
    """None: same as in_channels."""
    num_layers: int = 19
    """Double-stream (FluxTransformerBlock) blocks."""
    num_single_layers: int = 38
    """Single-stream (FluxSingleTransformerBlock) blocks."""
    attention_head_dim: int = 128
    """Width of one attention head."""
    num_attention_heads: int = 24
    """Attention heads; the model width is heads x attention_head_dim (3072 for FLUX.1)."""
    joint_attention_dim: int = 4096
    """Width of the T5 token features."""
    pooled_projection_dim: int = 768
    """Width of the pooled CLIP text embedding."""
    guidance_embeds: bool = False
    """Guidance-distilled model (FLUX.1-dev): the guidance scale is embedded like the timestep."""
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    """Rotary dimensions per id axis; they sum to attention_head_dim."""
    dtype: Any = jnp.float32
    """Compute dtype (parameters stay float32; the output is returned in float32)."""
    remat: bool = False
    """Gradient checkpointing: recompute each block in the backward pass."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise ValueError(
                f"FluxConfig.axes_dims_rope={self.axes_dims_rope} must be even numbers summing to "
                f"attention_head_dim={self.attention_head_dim}"
            )
        if self.num_layers < 1 or self.num_single_layers < 1:
            raise ValueError(
                f"FluxConfig.num_layers and num_single_layers must be at least 1, got {self.num_layers} and "
                f"{self.num_single_layers}"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @classmethod
    def flux1_dev(cls, **overrides: Any) -> FluxConfig:
        """black-forest-labs/FLUX.1-dev ``transformer/config.json`` (11.9B parameters, guidance-distilled)."""
        return cls(**{"guidance_embeds": True, **overrides})

    @classmethod
    def flux1_schnell(cls, **overrides: Any) -> FluxConfig:
        """black-forest-labs/FLUX.1-schnell: the FLUX.1-dev architecture without the guidance embedder."""
        return cls(**{"guidance_embeds": False, **overrides})

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> FluxConfig:
        """Reads a diffusers ``transformer/config.json`` dict; ``overrides`` set our own fields (dtype,
        remat). Unsupported settings raise ConversionError."""
        if config.get("patch_size", 1) != 1:
            raise ConversionError(
                f"flux config: patch_size={config['patch_size']!r} is not supported (only 1)"
            )
        fields = {f.name for f in dataclasses.fields(cls)} - {"dtype", "remat"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in fields | {"patch_size"})
        if unknown:
            raise ConversionError(f"flux config: unsupported setting(s) {unknown} (a different architecture)")
        kwargs = {k: v for k, v in config.items() if k in fields}
        try:
            return cls(**{**kwargs, **overrides})
        except ValueError as e:
            raise ConversionError(f"flux config: {e}") from e


# ------------------------------------------------------------------------------------------------------------
# Inputs as FluxPipeline builds them.


def pack_latents(latents: jax.Array) -> jax.Array:
    """2x2 patches of NHWC latents as tokens, features ordered (channel, dy, dx) like ``_pack_latents``.

    latents: (b, h, w, c) with h, w even -> (b, h/2 * w/2, 4c), tokens in row-major patch order.
    """
    b, h, w, c = latents.shape
    x = latents.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: jax.Array, height: int, width: int) -> jax.Array:
    """Inverse of :func:`pack_latents`. tokens: (b, height/2 * width/2, 4c) -> (b, height, width, c)."""
    b, _, features = tokens.shape
    c = features // 4
    x = tokens.reshape(b, height // 2, width // 2, c, 2, 2)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, height, width, c)


def image_ids(height: int, width: int) -> jax.Array:
    """Position ids of the packed image tokens, as FluxPipeline's ``_prepare_latent_image_ids(b, height,
    width)``.

    height, width: the packed token grid (latent height / 2, latent width / 2).
    Returns (height * width, 3) float32 rows (0, row, col) in row-major order.
    """
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ids = np.stack([np.zeros_like(rows), rows, cols], axis=-1).reshape(height * width, 3)
    return jnp.asarray(ids, jnp.float32)


def text_ids(seq: int) -> jax.Array:
    """Position ids of the T5 tokens: all zero (text carries no rotary position). Returns (seq, 3) float32."""
    return jnp.zeros((seq, 3), jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# Rotary position embedding.


def rope_frequencies(ids: jax.Array, axes_dims: tuple[int, ...], theta: float = ROPE_THETA) -> jax.Array:
    """cos / sin tables of diffusers' ``FluxPosEmbed``: per id axis i, frequencies theta^(-2k / axes_dims[i]),
    each angle repeated twice (interleaved pairs), axes concatenated.

    ids: (seq, n_axes) -> (2, seq, sum(axes_dims)) float32 (cos, sin). diffusers forms the angles in float64;
    here they are float32 (jit-friendly, no x64 mode): a relative error of ~1e-7, under 1e-4 rad for positions
    below 512 (a 8192-pixel side).
    """
    pos = ids.astype(jnp.float32)
    angles = []
    for i, dim in enumerate(axes_dims):
        freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles.append(jnp.repeat(pos[:, i, None] * jnp.asarray(freqs, jnp.float32), 2, axis=-1))
    angle = jnp.concatenate(angles, axis=-1)
    return jnp.stack([jnp.cos(angle), jnp.sin(angle)])


def apply_rope(x: jax.Array, rope: jax.Array) -> jax.Array:
    """Rotates consecutive feature pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in float32.

    x: (b, seq, heads, head_dim); rope: (2, seq, head_dim) from :func:`rope_frequencies`. Returns x's dtype.
    """
    cos, sin = rope[0][None, :, None, :], rope[1][None, :, None, :]
    xf = x.astype(jnp.float32)
    pairs = xf.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return (xf * cos + rotated * sin).astype(x.dtype)


# ------------------------------------------------------------------------------------------------------------
# Embeddings and adaptive norms.


class CombinedTimestepTextProjEmbeddings(nnx.Module):
    """temb = MLP(sinusoid(t)) [+ MLP(sinusoid(guidance))] + MLP(pooled text).

    diffusers' CombinedTimestepTextProjEmbeddings, or CombinedTimestepGuidanceTextProjEmbeddings with
    ``guidance``. The pooled-text projection (PixArtAlphaTextProjection, SiLU) is the same Linear-SiLU-Linear
    as a timestep embedder, with the same parameter names.
    """

    def __init__(self, dim: int, pooled_dim: int, *, guidance: bool, rngs: nnx.Rngs, dtype: Any):
        self.dtype = dtype
        self.timestep_embedder = TimestepEmbedding(TIME_PROJ_DIM, dim, rngs=rngs, dtype=dtype)
        self.guidance_embedder = (
            TimestepEmbedding(TIME_PROJ_DIM, dim, rngs=rngs, dtype=dtype) if guidance else None
        )
        self.text_embedder = TimestepEmbedding(pooled_dim, dim, rngs=rngs, dtype=dtype)

    def _embed(self, embedder: TimestepEmbedding, t: jax.Array) -> jax.Array:
        proj = timestep_embedding(t, TIME_PROJ_DIM, flip_sin_to_cos=True, freq_shift=0)
        return embedder(proj.astype(self.dtype))

    def __call__(self, timestep: jax.Array, pooled: jax.Array, guidance: jax.Array | None) -> jax.Array:
        """timestep, guidance: (b,) already x1000; pooled: (b, pooled_dim) -> (b, dim)."""
        temb = self._embed(self.timestep_embedder, timestep)
        if self.guidance_embedder is not None:
            temb = temb + self._embed(self.guidance_embedder, guidance)
        return temb + self.text_embedder(pooled)


class AdaLayerNorm(nnx.Module):
    """LayerNorm without affine parameters, modulated by chunks of Linear(SiLU(temb)).

    ``chunks`` is 6 (AdaLayerNormZero: shift, scale, gate for attention and for the MLP), 3
    (AdaLayerNormZeroSingle) or 2 (AdaLayerNormContinuous, where the order is scale, shift).
    """

    def __init__(self, dim: int, chunks: int, *, rngs: nnx.Rngs, dtype: Any):
        self.chunks = chunks
        self.linear = layers.dense(dim, chunks * dim, rngs=rngs, dtype=dtype)
        self.norm = layers.layer_norm(dim, eps=1e-6, use_scale=False, use_bias=False, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, temb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """x: (b, seq, dim), temb: (b, dim) -> (norm(x) modulated, the remaining (b, dim) chunks).

        The first two chunks modulate the norm: (shift, scale), or (scale, shift) for ``chunks == 2``.
        """
        emb = jnp.split(self.linear(jax.nn.silu(temb)), self.chunks, axis=-1)
        scale, shift = (emb[0], emb[1]) if self.chunks == 2 else (emb[1], emb[0])
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None], emb[2:]


class FeedForward(nnx.Module):
    """Linear to 4x width -> GELU (tanh approximation) -> Linear back (diffusers' ``net.0.proj`` /
    ``net.2``)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any):
        self.proj_in = layers.dense(dim, MLP_RATIO * dim, rngs=rngs, dtype=dtype)
        self.proj_out = layers.dense(MLP_RATIO * dim, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., dim) -> (..., dim)."""
        return self.proj_out(jax.nn.gelu(self.proj_in(x), approximate=True))


# ------------------------------------------------------------------------------------------------------------
# Attention and blocks.


class FluxAttention(nnx.Module):
    """diffusers' FluxAttention with FluxAttnProcessor: per-head RMS-normed queries and keys, rotary
    embedding, softmax attention over all tokens.

    ``joint`` (double-stream blocks) adds the text stream's own projections (``add_*_proj``, ``norm_added_*``,
    ``to_add_out``) and output projections; otherwise (single-stream, diffusers' ``pre_only``) the attention
    output is returned unprojected.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, joint: bool, rngs: nnx.Rngs, dtype: Any):
        inner = heads * head_dim
        self.heads = heads

        def proj_in() -> nnx.Linear:
            return layers.dense(dim, inner, rngs=rngs, axes=("embed", "heads"), dtype=dtype)

        def proj_out() -> nnx.Linear:
            return layers.dense(inner, dim, rngs=rngs, axes=("heads", "embed"), dtype=dtype)

        def norm() -> nnx.RMSNorm:
            return layers.rms_norm(head_dim, eps=1e-6, rngs=rngs, dtype=dtype)

        self.to_q, self.to_k, self.to_v = proj_in(), proj_in(), proj_in()
        self.norm_q, self.norm_k = norm(), norm()
        if joint:
            # A list so that the parameter path is diffusers' `to_out.0` (its `to_out.1` is a dropout).
            self.to_out = nnx.List([proj_out()])
            self.add_q_proj, self.add_k_proj, self.add_v_proj = proj_in(), proj_in(), proj_in()
            self.norm_added_q, self.norm_added_k = norm(), norm()
            self.to_add_out = proj_out()

    def _heads(self, x: jax.Array, proj: nnx.Linear, norm: nnx.RMSNorm | None = None) -> jax.Array:
        """x: (b, n, dim) -> (b, n, heads, head_dim), RMS-normed per head when ``norm`` is given."""
        out = proj(x)
        out = out.reshape(*out.shape[:-1], self.heads, -1)
        return out if norm is None else norm(out)

    def __call__(
        self, x: jax.Array, rope: jax.Array, context: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x: (b, n, dim); rope: (2, [m +] n, head_dim) for the text tokens (if any) then x's tokens;
        context: (b, m, dim) text tokens of a joint block.

        Returns (b, n, heads * head_dim) unprojected without ``context``, else the projected (image, text)
        outputs (b, n, dim), (b, m, dim).
        """
        q = self._heads(x, self.to_q, self.norm_q)
        k = self._heads(x, self.to_k, self.norm_k)
        v = self._heads(x, self.to_v)
        if context is not None:
            cq = self._heads(context, self.add_q_proj, self.norm_added_q)
            ck = self._heads(context, self.add_k_proj, self.norm_added_k)
            cv = self._heads(context, self.add_v_proj)
            # Text tokens first, as the rotary ids (txt_ids, img_ids) are ordered.
            q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((cq, q), (ck, k), (cv, v)))
        out = layers.attention(apply_rope(q, rope), apply_rope(k, rope), v)
        out = out.reshape(*out.shape[:-2], -1)
        if context is None:
            return out
        m = context.shape[1]
        return self.to_out[0](out[:, m:]), self.to_add_out(out[:, :m])


class FluxTransformerBlock(nnx.Module):
    """Double-stream block: image and text tokens keep separate weights (adaptive norms, projections,
    feed-forwards) and meet in one joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs, dtype: Any):
        self.norm1 = AdaLayerNorm(dim, 6, rngs=rngs, dtype=dtype)
        self.norm1_context = AdaLayerNorm(dim, 6, rngs=rngs, dtype=dtype)
        self.attn = FluxAttention(dim, heads, head_dim, joint=True, rngs=rngs, dtype=dtype)
        self.norm2 = layers.layer_norm(dim, eps=1e-6, use_scale=False, use_bias=False, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)
        self.norm2_context = layers.layer_norm(
            dim, eps=1e-6, use_scale=False, use_bias=False, rngs=rngs, dtype=dtype
        )
        self.ff_context = FeedForward(dim, rngs=rngs, dtype=dtype)

    def __call__(
        self, x: jax.Array, context: jax.Array, temb: jax.Array, rope: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """x: (b, n, dim) image, context: (b, m, dim) text, temb: (b, dim), rope: (2, m + n, head_dim)
        -> updated (x, context)."""
        h, (gate_msa, shift_mlp, scale_mlp, gate_mlp) = self.norm1(x, temb)
        ch, (c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(context, temb)
        attn, context_attn = self.attn(h, rope, ch)

        x = x + gate_msa[:, None] * attn
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        x = x + gate_mlp[:, None] * self.ff(h)

        context = context + c_gate_msa[:, None] * context_attn
        ch = self.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        context = context + c_gate_mlp[:, None] * self.ff_context(ch)
        return x, context


class FluxSingleTransformerBlock(nnx.Module):
    """Single-stream block over the concatenated [text, image] tokens: attention and an MLP in parallel from
    one adaptive norm, their outputs concatenated and projected back, gated residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs, dtype: Any):
        mlp_dim = MLP_RATIO * dim
        self.norm = AdaLayerNorm(dim, 3, rngs=rngs, dtype=dtype)
        self.proj_mlp = layers.dense(dim, mlp_dim, rngs=rngs, dtype=dtype)
        self.attn = FluxAttention(dim, heads, head_dim, joint=False, rngs=rngs, dtype=dtype)
        self.proj_out = layers.dense(
            heads * head_dim + mlp_dim, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype
        )

    def __call__(self, x: jax.Array, temb: jax.Array, rope: jax.Array) -> jax.Array:
        """x: (b, m + n, dim) text then image tokens, temb: (b, dim), rope: (2, m + n, head_dim)
        -> (b, m + n, dim)."""
        h, (gate,) = self.norm(x, temb)
        mlp = jax.nn.gelu(self.proj_mlp(h), approximate=True)
        out = self.proj_out(jnp.concatenate([self.attn(h, rope), mlp], axis=-1))
        return x + gate[:, None] * out


class FluxTransformer2DModel(nnx.Module):
    """The FLUX.1 flow-matching denoiser: predicts the velocity of packed latent tokens."""

    def __init__(self, config: FluxConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        dim, dtype = c.inner_dim, c.dtype
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(
            dim, c.pooled_projection_dim, guidance=c.guidance_embeds, rngs=rngs, dtype=dtype
        )
        self.context_embedder = layers.dense(
            c.joint_attention_dim, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype
        )
        self.x_embedder = layers.dense(c.in_channels, dim, rngs=rngs, axes=(None, "embed"), dtype=dtype)
        heads, head_dim = c.num_attention_heads, c.attention_head_dim
        self.transformer_blocks = layers.stacked(
            lambda r: FluxTransformerBlock(dim, heads, head_dim, rngs=r, dtype=dtype), c.num_layers, rngs
        )
        self.single_transformer_blocks = layers.stacked(
            lambda r: FluxSingleTransformerBlock(dim, heads, head_dim, rngs=r, dtype=dtype),
            c.num_single_layers,
            rngs,
        )
        self.norm_out = AdaLayerNorm(dim, 2, rngs=rngs, dtype=dtype)
        self.proj_out = layers.dense(dim, c.output_channels, rngs=rngs, axes=("embed", None), dtype=dtype)

    def __call__(
        self,
        hidden_states: jax.Array,
        encoder_hidden_states: jax.Array,
        pooled_projections: jax.Array,
        timestep: jax.Array,
        img_ids: jax.Array,
        txt_ids: jax.Array,
        guidance: jax.Array | None = None,
    ) -> jax.Array:
        """As diffusers' ``FluxTransformer2DModel.forward`` (FluxPipeline passes ``timestep / 1000``).

        hidden_states: (b, img_seq, in_channels) packed latents; encoder_hidden_states: (b, txt_seq,
        joint_attention_dim) T5 features; pooled_projections: (b, pooled_projection_dim) pooled CLIP;
        timestep: (b,) flow time in [0, 1] (scaled by 1000 here); img_ids: (img_seq, 3), txt_ids: (txt_seq, 3)
        position ids; guidance: (b,) guidance scale (also scaled by 1000), required iff
        ``config.guidance_embeds``. Returns (b, img_seq, out_channels) float32.
        """
        c = self.config
        if (guidance is None) == c.guidance_embeds:
            raise ValueError(
                f"FluxTransformer2DModel: guidance must be {'given' if c.guidance_embeds else 'None'} for a "
                f"model with guidance_embeds={c.guidance_embeds}"
            )
        # Time and guidance stay float32 into the sinusoid whatever the compute dtype: 1000 t in bfloat16
        # would round to steps of 4.
        t = timestep.astype(jnp.float32) * 1000
        g = None if guidance is None else guidance.astype(jnp.float32) * 1000
        temb = self.time_text_embed(t, pooled_projections.astype(c.dtype), g)
        x = self.x_embedder(hidden_states.astype(c.dtype))
        context = self.context_embedder(encoder_hidden_states.astype(c.dtype))
        rope = rope_frequencies(jnp.concatenate([txt_ids, img_ids], axis=0), c.axes_dims_rope)

        x, context = layers.scan_blocks(self.transformer_blocks, (x, context), temb, rope, remat=c.remat)
        m = context.shape[1]
        joint = layers.scan_blocks(
            self.single_transformer_blocks, jnp.concatenate([context, x], axis=1), temb, rope, remat=c.remat
        )
        x, _ = self.norm_out(joint[:, m:], temb)
        return self.proj_out(x).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# Checkpoint conversion.

_STACKS = r"(transformer_blocks|single_transformer_blocks)"

CONVERSION_RULES: tuple[Rule, ...] = (
    Rule(rf"^{_STACKS}\.(\d+)\.(ff|ff_context)\.net\.0\.proj\.(weight|bias)$", r"\1.\3.proj_in.\4@\2"),
    Rule(rf"^{_STACKS}\.(\d+)\.(ff|ff_context)\.net\.2\.(weight|bias)$", r"\1.\3.proj_out.\4@\2"),
    Rule(rf"^{_STACKS}\.(\d+)\.(.+)$", r"\1.\3@\2"),
    conversion.MIRROR,
)
"""diffusers FluxTransformer2DModel names -> ours: block indices become the stacked axis, the feed-forward's
``net.0.proj`` / ``net.2`` become ``proj_in`` / ``proj_out``; Linear layouts are handled by the leaf rule."""

IGNORED: tuple[str, ...] = ()
"""The diffusers FLUX transformer checkpoint has no buffers: every tensor must be consumed."""


def load_flux_transformer(
    folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False, place: Any = None
) -> FluxTransformer2DModel:
    """Builds a :class:`FluxTransformer2DModel` from a diffusers ``transformer`` folder (config.json +
    safetensors, sharded or not)."""
    folder = Path(folder)
    config = FluxConfig.from_dict(conversion.read_config(folder), dtype=dtype, remat=remat)
    tensors = conversion.read_weights(folder, what="flux transformer")
    return conversion.load_module(
        lambda: FluxTransformer2DModel(config, rngs=nnx.Rngs(0)),
        tensors,
        CONVERSION_RULES,
        ignore=IGNORED,
        place=place,
        source=f"flux transformer {folder}",
    )
