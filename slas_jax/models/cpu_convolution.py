"""Convolutions whose gradients stay on XLA:CPU's fast path inside loops.

XLA:CPU runs a convolution through Eigen only in canonical form (input NHWC, kernel HWIO, output NHWC);
its ``ConvCanonicalization`` pass rewrites other forms into transposes around a canonical convolution, but
only in the entry computation. The gradients JAX derives for a convolution (the kernel gradient contracts
over the batch, the input gradient uses the kernel's in/out swapped) are written as non-canonical dimension
numbers, so inside a ``lax.scan`` body (the GRPO update's loops) they fall to XLA's naive loop emitter: the
shapes UNet's loss and gradient took 16 s per slice inside a scan against 1.0 s at the top level.

:func:`conv_general_dilated` is ``lax.conv_general_dilated`` with the same forward, whose backward evaluates
JAX's own gradient of the convolution with each convolution in it written out as the canonicalisation pass
would (the same transposes around the same canonical convolution). The gradients are therefore the ones XLA
computes at the top level, bit for bit, wherever the convolution sits. Accelerators canonicalise every
computation themselves and keep ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core


def _canonical_convolution(
    lhs: jax.Array, rhs: jax.Array, *, dimension_numbers: Any, **params: Any
) -> jax.Array:
    """One ``conv_general_dilated`` equation with any dimension numbers, as transposes around the canonical
    (batch, spatial..., feature) x (spatial..., in, out) convolution; ``params`` are the equation's other
    parameters (window, padding, dilations, group counts, precision)."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    n = lhs.ndim
    spatial = tuple(range(1, n - 1))
    canonical = lax.ConvDimensionNumbers(
        (0, n - 1, *spatial), (n - 1, n - 2, *range(n - 2)), (0, n - 1, *spatial)
    )
    out = lax.conv_general_dilated_p.bind(
        jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])),
        jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])),
        dimension_numbers=canonical,
        **params,
    )
    out_order = (out_spec[0], *out_spec[2:], out_spec[1])
    return jnp.transpose(out, [out_order.index(d) for d in range(n)])


def _eval_canonical(closed: jax_core.ClosedJaxpr, *args: jax.Array) -> list[jax.Array]:
    """Evaluates a flat jaxpr (a convolution's VJP holds no sub-jaxprs) with every convolution canonical."""
    env: dict[Any, Any] = dict(zip(closed.jaxpr.constvars, closed.consts, strict=True))
    env.update(zip(closed.jaxpr.invars, args, strict=True))

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax_core.Literal) else env[v]

    for eqn in closed.jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        if eqn.primitive is lax.conv_general_dilated_p:
            outputs = [_canonical_convolution(*inputs, **eqn.params)]
        else:
            result = eqn.primitive.bind(*inputs, **eqn.params)
            outputs = result if eqn.primitive.multiple_results else [result]
        env.update(zip(eqn.outvars, outputs, strict=True))
    return [read(v) for v in closed.jaxpr.outvars]


@functools.cache
def _convolution(static: tuple[tuple[str, Any], ...]) -> Any:
    """The custom-VJP convolution for one set of static arguments (hashable, so traced once per layer kind)."""

    def plain(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(lhs, rhs, **dict(static))

    @jax.custom_vjp
    def convolution(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return plain(lhs, rhs)

    def forward(lhs: jax.Array, rhs: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return plain(lhs, rhs), (lhs, rhs)

    def backward(residuals: tuple[jax.Array, jax.Array], cotangent: jax.Array) -> tuple[jax.Array, ...]:
        _, vjp = jax.vjp(plain, *residuals)
        return tuple(_eval_canonical(jax.make_jaxpr(vjp)(cotangent), cotangent))

    convolution.defvjp(forward, backward)
    return convolution


def _frozen(value: Any) -> Any:
    """Lists (flax passes padding as one) -> tuples, so the static arguments hash; named tuples (dimension
    numbers) stay as they are."""
    if isinstance(value, list) or type(value) is tuple:
        return tuple(_frozen(v) for v in value)
    return value


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments and result) with canonical convolutions in its
    gradient; nnx.Conv's ``conv_general_dilated`` hook on CPU (``slas_jax.models.layers.conv``)."""
    static = {
        "window_strides": _frozen(window_strides),
        "padding": _frozen(padding),
        "lhs_dilation": _frozen(lhs_dilation),
        "rhs_dilation": _frozen(rhs_dilation),
        "dimension_numbers": _frozen(dimension_numbers),
        "feature_group_count": feature_group_count,
        "batch_group_count": batch_group_count,
        "precision": precision,
        "preferred_element_type": preferred_element_type,
        "out_sharding": out_sharding,
    }
    return _convolution(tuple(static.items()))(lhs, rhs)
