"""Shared Flax NNX layer constructors whose parameters carry logical axis names.

Every backbone builds its Linear / Conv / norm layers through these helpers so that one table of
logical-axis rules (``slas_jax.parallel``) maps all parameters onto a device mesh. Logical axis names used:

- ``embed``: model width (activations' feature axis), ``mlp``: hidden width of feed-forward layers,
- ``heads``: attention heads x head dim on projections, ``vocab``: token embeddings,
- ``conv_in`` / ``conv_out``: convolution channels, ``norm``: norm scales and biases,
- ``layers``: the stacked leading axis of scanned block stacks.

Parameters are float32 by default; ``dtype`` is the compute dtype (e.g. bfloat16 on TPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slas_jax.models import cpu_convolution

Axes = tuple[str | None, ...]

_LECUN_NORMAL = nnx.initializers.lecun_normal()
_NORMAL_002 = nnx.initializers.normal(0.02)


def with_axes(init: nnx.Initializer, axes: Axes) -> nnx.Initializer:
    """Annotates an initializer with logical axis names (sharding applied later, not at creation)."""
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def dense(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    axes: Axes = ("embed", "mlp"),
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    kernel_init: nnx.Initializer = _LECUN_NORMAL,
) -> nnx.Linear:
    """Linear layer; kernel (in, out) annotated with ``axes``, bias with ``axes[1]``."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=with_axes(kernel_init, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    padding: int | str | None = None,
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
) -> nnx.Conv:
    """2-D convolution on NHWC inputs, kernel (kh, kw, in, out); padding defaults to PyTorch's k // 2. On CPU
    its gradient keeps Eigen's fast path inside loops (:mod:`slas_jax.models.cpu_convolution`)."""
    pad = kernel_size // 2 if padding is None else padding
    pad_arg: str | Sequence[tuple[int, int]] = pad if isinstance(pad, str) else ((pad, pad), (pad, pad))
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=pad_arg,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=with_axes(nnx.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
        bias_init=with_axes(nnx.initializers.zeros_init(), ("conv_out",)),
        conv_general_dilated=(
            cpu_convolution.conv_general_dilated
            if jax.default_backend() == "cpu"
            else jax.lax.conv_general_dilated
        ),
        rngs=rngs,
    )


def group_norm(
    num_features: int,
    num_groups: int,
    *,
    rngs: nnx.Rngs,
    eps: float = 1e-5,
    dtype: jnp.dtype | None = None,
) -> nnx.GroupNorm:
    """GroupNorm over the channel (last) axis with PyTorch's epsilon convention (variance + eps)."""
    return nnx.GroupNorm(
        num_features,
        num_groups=num_groups,
        epsilon=eps,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=with_axes(nnx.initializers.ones_init(), ("norm",)),
        bias_init=with_axes(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


def layer_norm(
    num_features: int,
    *,
    rngs: nnx.Rngs,
    eps: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
) -> nnx.LayerNorm:
    """LayerNorm over the last axis (elementwise affine optional, as in PyTorch)."""
    return nnx.LayerNorm(
        num_features,
        epsilon=eps,
        use_scale=use_scale,
        use_bias=use_bias,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=with_axes(nnx.initializers.ones_init(), ("norm",)),
        bias_init=with_axes(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


def embed(
    num_embeddings: int,
    features: int,
    *,
    rngs: nnx.Rngs,
    dtype: jnp.dtype | None = None,
) -> nnx.Embed:
    """Token / position embedding table (num_embeddings, features)."""
    return nnx.Embed(
        num_embeddings,
        features,
        dtype=dtype,
        embedding_init=with_axes(nnx.initializers.normal(0.02), ("vocab", "embed")),
        rngs=rngs,
    )


def param(
    shape: Sequence[int],
    axes: Axes,
    *,
    rngs: nnx.Rngs,
    init: nnx.Initializer = _NORMAL_002,
    param_dtype: jnp.dtype = jnp.float32,
) -> nnx.Param:
    """A free-standing parameter of ``shape`` annotated with ``axes`` (e.g. CLIP's class embedding)."""
    return nnx.Param(with_axes(init, axes)(rngs.params(), tuple(shape), param_dtype))


def remat_call(module: nnx.Module, *args: Any, enabled: bool) -> Any:
    """``module(*args)``; when ``enabled``, under ``jax.checkpoint`` so its activations are recomputed in the
    backward pass instead of stored (gradient checkpointing per block). Pass arrays positionally: closing
    over them would hide them from the rematerialisation boundary.

    Plain JAX transforms over ``nnx.split`` state (not ``nnx.remat``) so that a module merged from traced
    parameters, e.g. inside the rollout's ``lax.scan``, can be called at any trace level. Modules called
    this way must not mutate their state (no batch statistics), which holds for every backbone here."""
    if not enabled:
        return module(*args)
    graphdef, state = nnx.split(module)
    return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


def rms_norm(
    num_features: int, *, rngs: nnx.Rngs, eps: float = 1e-6, dtype: jnp.dtype | None = None
) -> nnx.RMSNorm:
    """RMS norm over the last axis, x / sqrt(mean(x^2) + eps) * scale, statistics in float32 (T5LayerNorm,
    torch.nn.RMSNorm)."""
    return nnx.RMSNorm(
        num_features,
        epsilon=eps,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=with_axes(nnx.initializers.ones_init(), ("norm",)),
        rngs=rngs,
    )


def stacked(make: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` independent copies of ``make(rngs)`` as one module whose parameters have a leading axis of
    size ``depth`` (logical name ``layers``), to be run with :func:`scan_blocks`."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs: nnx.Rngs) -> nnx.Module:
        return make(rngs)

    return build(rngs)


def scan_blocks(stack: nnx.Module, carry: Any, *broadcast: Any, remat: bool) -> Any:
    """Applies the blocks of a :func:`stacked` module in order: ``carry = block(*carry, *broadcast)``.

    carry: an array or a tuple of arrays (the block's first arguments, returned in the same structure);
    broadcast: arguments every block receives unchanged. One compiled block body, whatever the depth.
    A plain ``lax.scan`` over the stacked state (see :func:`remat_call` for why not ``nnx.scan``).
    """
    graphdef, state = nnx.split(stack)

    def body(carry: Any, layer_state: Any) -> tuple[Any, None]:
        args = carry if isinstance(carry, tuple) else (carry,)
        return remat_call(nnx.merge(graphdef, layer_state), *args, *broadcast, enabled=remat), None

    return jax.lax.scan(body, carry, state)[0]


ATTENTION_CHUNK_BYTES = 1 << 21
"""On CPU, the float32 attention logits of one batch chunk stay under this size (about an L2 cache)."""


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None, bias: jax.Array | None = None
) -> jax.Array:
    """Scaled dot-product attention.

    q: (batch, q_len, heads, head_dim), k/v: (batch, kv_len, heads, head_dim); mask broadcastable to
    (batch, heads, q_len, kv_len), True where attention is allowed; bias added to the logits.
    Returns (batch, q_len, heads, head_dim) in q's dtype; softmax runs in float32.

    On CPU the batch runs in chunks whose logits fit ``ATTENTION_CHUNK_BYTES``, each chunk rematerialised in
    the backward pass: XLA:CPU otherwise writes the whole (batch, heads, q_len, kv_len) logits to memory and
    runs the batched small matmuls far below peak (the shapes flow model's 272-token attention, 64 images:
    forward 180 -> 50 ms, gradient 330 -> 140 ms). The arithmetic of each element is the same.
    """
    b = q.shape[0]
    chunk = _cpu_batch_chunk(b, 4 * q.shape[1] * q.shape[2] * k.shape[1])
    if chunk == b:
        return _attention(q, k, v, mask, bias)
    chunked = {"q": q, "k": k, "v": v}
    fixed = {}
    for name, extra in (("mask", mask), ("bias", bias)):
        if extra is not None and extra.ndim == 4 and extra.shape[0] == b:
            chunked[name] = extra
        else:
            fixed[name] = extra

    def one_chunk(t: dict[str, jax.Array]) -> jax.Array:
        merged = {**fixed, **t}
        return _attention(merged["q"], merged["k"], merged["v"], merged.get("mask"), merged.get("bias"))

    split = {n: a.reshape(b // chunk, chunk, *a.shape[1:]) for n, a in chunked.items()}
    out = jax.lax.map(jax.checkpoint(one_chunk), split)
    return out.reshape(b, *out.shape[2:])


def _cpu_batch_chunk(batch: int, logits_bytes_per_row: int) -> int:
    """The batch chunk :func:`attention` runs at once: the whole batch off CPU, else the largest divisor of
    ``batch`` whose logits fit ``ATTENTION_CHUNK_BYTES`` (at least 1)."""
    if jax.default_backend() != "cpu":
        return batch
    fits = max(1, ATTENTION_CHUNK_BYTES // logits_bytes_per_row)
    return max(d for d in range(1, min(batch, fits) + 1) if batch % d == 0)


def _attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, bias: jax.Array | None
) -> jax.Array:
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
