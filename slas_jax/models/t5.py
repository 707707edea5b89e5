"""The T5 text encoder (transformers ``T5EncoderModel``, v1.1 / T5-XXL style) in Flax NNX.

FLUX conditions on the per-token features of T5-v1.1-XXL (``text_encoder_2`` of a FLUX pipeline folder).
The module tree mirrors transformers' names (``encoder.block.3.layer.1.DenseReluDense.wi_0``...) except in
two places, both handled by :data:`CONVERSION_RULES`:

- the encoder blocks are one scanned stack (parameters with a leading ``layers`` axis), so that compile time
  does not grow with depth; ``encoder.block.{i}.X`` converts onto ``encoder.block.X@{i}``;
- T5 computes its relative position bias in the first layer and shares it with all the others, so that table
  lives beside the stack as ``encoder.relative_attention_bias`` (every block in the stack has the same shape).

Numerics as transformers: T5LayerNorm is a root-mean-square norm (no mean subtraction, no bias) with
statistics in float32; attention logits are not scaled by 1/sqrt(d_kv) (T5 folds that into the
initialisation); the bidirectional relative position buckets are half exact, half logarithmic up to
``max_distance``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.models import conversion, layers
from slas_jax.models.conversion import ConversionError, Rule

# feed_forward_proj -> (gated, activation). transformers maps "gated-gelu" to gelu_new (tanh approximation).
_FEED_FORWARDS: dict[str, tuple[bool, Callable[[jax.Array], jax.Array]]] = {
    "relu": (False, jax.nn.relu),
    "gated-gelu": (True, lambda x: jax.nn.gelu(x, approximate=True)),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
    """Architecture of a T5 encoder (field names follow transformers' config.json)."""

    vocab_size: int = 32128
    """Rows of the token embedding ``shared`` (32128: T5's 32100 SentencePiece pieces and sentinels,
    padded)."""
    d_model: int = 512
    """Model width."""
    d_kv: int = 64
    """Width of one attention head (heads x d_kv need not equal d_model)."""
    d_ff: int = 2048
    """Hidden width of each block's feed-forward."""
    num_layers: int = 6
    """Encoder blocks."""
    num_heads: int = 8
    """Attention heads per block."""
    relative_attention_num_buckets: int = 32
    """Buckets of the relative position bias: half for keys after the query, half for keys before it."""
    relative_attention_max_distance: int = 128
    """Distance at which the logarithmic buckets end; farther keys share the last bucket."""
    layer_norm_epsilon: float = 1e-6
    """Epsilon of every RMS norm."""
    feed_forward_proj: str = "relu"
    """"relu" (original T5: wi -> ReLU -> wo) or "gated-gelu" (v1.1: gelu_tanh(wi_0 x) * wi_1 x -> wo)."""
    dtype: Any = jnp.float32
    """Compute dtype (parameters stay float32; the output is returned in float32)."""
    remat: bool = False
    """Gradient checkpointing: recompute each block in the backward pass."""

    def __post_init__(self) -> None:
        if self.feed_forward_proj not in _FEED_FORWARDS:
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r} is not supported "
                f"(only {sorted(_FEED_FORWARDS)})"
            )
        if self.num_layers < 1:
            raise ValueError(f"T5Config.num_layers must be at least 1, got {self.num_layers}")

    @property
    def gated(self) -> bool:
        return _FEED_FORWARDS[self.feed_forward_proj][0]

    @property
    def activation(self) -> Callable[[jax.Array], jax.Array]:
        return _FEED_FORWARDS[self.feed_forward_proj][1]

    @classmethod
    def t5_v1_1_xxl(cls, **overrides: Any) -> T5Config:
        """google/t5-v1_1-xxl's encoder (FLUX's ``text_encoder_2``; 4.76B parameters)."""
        return cls(
            **{
                "d_model": 4096,
                "d_kv": 64,
                "d_ff": 10240,
                "num_layers": 24,
                "num_heads": 64,
                "vocab_size": 32128,
                "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128,
                "feed_forward_proj": "gated-gelu",
                **overrides,
            }
        )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> T5Config:
        """Reads a transformers T5 ``config.json`` dict; ``overrides`` set our own fields (dtype, remat).
        Unsupported settings raise ConversionError."""
        if config.get("model_type", "t5") != "t5":
            # umt5 / mt5-style models differ (e.g. umt5 has a relative bias per layer).
            raise ConversionError(
                f"t5 config: model_type={config['model_type']!r} is not supported (only 't5')"
            )
        if config.get("is_decoder", False):
            raise ConversionError("t5 config: is_decoder=True is not supported (only the encoder)")
        feed_forward_proj = config.get("feed_forward_proj", "relu")
        if feed_forward_proj not in _FEED_FORWARDS:
            raise ConversionError(
                f"t5 config: feed_forward_proj={feed_forward_proj!r} is not supported "
                f"(only {sorted(_FEED_FORWARDS)})"
            )
        fields = {f.name for f in dataclasses.fields(cls)} - {"dtype", "remat"}
        kwargs = {k: v for k, v in config.items() if k in fields}
        try:
            return cls(**{**kwargs, **overrides})
        except ValueError as e:
            raise ConversionError(f"t5 config: {e}") from e


def relative_position_buckets(
    query_length: int, key_length: int, *, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional relative-position buckets as transformers' ``T5Attention._relative_position_bucket``.

    Half of the buckets hold keys after the query; within each half, distances below num_buckets / 4 get a
    bucket each and larger ones share logarithmically wider buckets up to ``max_distance``. Static in the
    sequence lengths, so computed in numpy (float32, as the reference, so that bucket edges agree).
    Returns (query_length, key_length) int32.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) at distance 0 is discarded by the `where` below
        scaled = (
            np.log(distance.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(half - max_exact)
        )
    large = max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class T5Attention(nnx.Module):
    """Multi-head self-attention without logit scaling; the relative position bias comes in as an input."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        inner = config.num_heads * config.d_kv
        self.num_heads = config.num_heads
        dtype = config.dtype

        def proj(axes: layers.Axes, n_in: int, n_out: int) -> nnx.Linear:
            return layers.dense(n_in, n_out, rngs=rngs, axes=axes, use_bias=False, dtype=dtype)

        self.q = proj(("embed", "heads"), config.d_model, inner)
        self.k = proj(("embed", "heads"), config.d_model, inner)
        self.v = proj(("embed", "heads"), config.d_model, inner)
        self.o = proj(("heads", "embed"), inner, config.d_model)

    def __call__(self, x: jax.Array, position_bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: (batch, seq, d_model); position_bias: (heads, seq, seq) float32; mask: (batch, seq) bool (True:
        a real token) or None -> (batch, seq, d_model)."""

        def split_heads(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:-1], self.num_heads, -1)

        q, k, v = split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
        # Not layers.attention: T5 must not scale the logits by 1/sqrt(d_kv).
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits + position_bias[None]
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.o(out.reshape(*out.shape[:-2], -1))


class T5LayerSelfAttention(nnx.Module):
    """Pre-norm self-attention with a residual connection."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(config, rngs=rngs)
        self.layer_norm = layers.rms_norm(
            config.d_model, eps=config.layer_norm_epsilon, rngs=rngs, dtype=config.dtype
        )

    def __call__(self, x: jax.Array, position_bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: (batch, seq, d_model) -> (batch, seq, d_model)."""
        return x + self.SelfAttention(self.layer_norm(x), position_bias, mask)


class T5DenseActDense(nnx.Module):
    """wi -> activation -> wo, or with ``gated`` the v1.1 form act(wi_0 x) * wi_1 x -> wo. No biases."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.activation = config.activation
        self.gated = config.gated
        d, f, dtype = config.d_model, config.d_ff, config.dtype
        if config.gated:
            self.wi_0 = layers.dense(d, f, rngs=rngs, use_bias=False, dtype=dtype)
            self.wi_1 = layers.dense(d, f, rngs=rngs, use_bias=False, dtype=dtype)
        else:
            self.wi = layers.dense(d, f, rngs=rngs, use_bias=False, dtype=dtype)
        self.wo = layers.dense(f, d, rngs=rngs, axes=("mlp", "embed"), use_bias=False, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., d_model) -> (..., d_model)."""
        if self.gated:
            return self.wo(self.activation(self.wi_0(x)) * self.wi_1(x))
        return self.wo(self.activation(self.wi(x)))


class T5LayerFF(nnx.Module):
    """Pre-norm feed-forward with a residual connection (named ``DenseReluDense`` as in transformers, even
    when gated)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.DenseReluDense = T5DenseActDense(config, rngs=rngs)
        self.layer_norm = layers.rms_norm(
            config.d_model, eps=config.layer_norm_epsilon, rngs=rngs, dtype=config.dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (batch, seq, d_model) -> (batch, seq, d_model)."""
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
    """Self-attention then feed-forward; ``layer.0`` / ``layer.1`` as transformers' T5Block of an encoder."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.layer = nnx.List([T5LayerSelfAttention(config, rngs=rngs), T5LayerFF(config, rngs=rngs)])

    def __call__(self, x: jax.Array, position_bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: (batch, seq, d_model) -> (batch, seq, d_model)."""
        return self.layer[1](self.layer[0](x, position_bias, mask))


class T5Stack(nnx.Module):
    """The encoder: scanned blocks sharing one relative position bias, then the final RMS norm."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        # transformers keeps this table in block 0 (`block.0.layer.0.SelfAttention.relative_attention_bias`)
        # and passes the bias it computes to every later block; here it sits outside the scanned stack.
        self.relative_attention_bias = layers.param(
            (config.relative_attention_num_buckets, config.num_heads), (None, "heads"), rngs=rngs
        )
        self.block = layers.stacked(lambda r: T5Block(config, rngs=r), config.num_layers, rngs)
        self.final_layer_norm = layers.rms_norm(
            config.d_model, eps=config.layer_norm_epsilon, rngs=rngs, dtype=config.dtype
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: (batch, seq, d_model) embedded tokens; mask: (batch, seq) bool or None
        -> (batch, seq, d_model)."""
        c = self.config
        seq = x.shape[1]
        buckets = relative_position_buckets(
            seq,
            seq,
            num_buckets=c.relative_attention_num_buckets,
            max_distance=c.relative_attention_max_distance,
        )
        position_bias = jnp.transpose(self.relative_attention_bias[...][buckets], (2, 0, 1))  # (heads, q, k)
        x = layers.scan_blocks(self.block, x, position_bias, mask, remat=c.remat)
        return self.final_layer_norm(x)


class T5EncoderModel(nnx.Module):
    """Token embedding (``shared``) followed by the encoder stack."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.shared = layers.embed(config.vocab_size, config.d_model, rngs=rngs, dtype=config.dtype)
        self.encoder = T5Stack(config, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids: (batch, seq) int32; attention_mask: (batch, seq), 1 for tokens and 0 for padding, or
        None (attend everywhere). Returns the last hidden state (batch, seq, d_model) float32."""
        mask = None if attention_mask is None else attention_mask.astype(bool)
        return self.encoder(self.shared(input_ids), mask).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# Checkpoint conversion.

CONVERSION_RULES: tuple[Rule, ...] = (
    Rule(
        r"^encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
        "encoder.relative_attention_bias",
    ),
    Rule(r"^encoder\.block\.(\d+)\.(.+)$", r"encoder.block.\2@\1"),
    conversion.MIRROR,
)
"""transformers T5EncoderModel names -> ours: the block index becomes the stacked axis, the shared bias
moves out of block 0."""

IGNORED: tuple[str, ...] = (r"^encoder\.embed_tokens\.weight$",)
"""``encoder.embed_tokens`` is tied to ``shared`` (same tensor); some checkpoints store both names."""


def load_t5_encoder(
    folder: str | Path, *, dtype: Any = jnp.float32, remat: bool = False, place: Any = None
) -> T5EncoderModel:
    """Builds a :class:`T5EncoderModel` from a transformers folder (config.json + safetensors), e.g. the
    ``text_encoder_2`` folder of a FLUX pipeline."""
    folder = Path(folder)
    config = T5Config.from_dict(conversion.read_config(folder), dtype=dtype, remat=remat)
    tensors = dict(conversion.read_weights(folder, what="t5 encoder"))
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        # A checkpoint that stored the tied embedding only under the encoder's name.
        tensors["shared.weight"] = tensors.pop("encoder.embed_tokens.weight")
    return conversion.load_module(
        lambda: T5EncoderModel(config, rngs=nnx.Rngs(0)),
        tensors,
        CONVERSION_RULES,
        ignore=IGNORED,
        place=place,
        source=f"t5 encoder {folder}",
    )
