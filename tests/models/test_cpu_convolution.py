"""The CPU convolution: the same forward and gradients as lax.conv_general_dilated, and gradients that stay
canonical (Eigen's fast path on XLA:CPU) inside a scan, where XLA's own canonicalisation does not reach."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from slas_jax.models import cpu_convolution

CASES = {
    "3x3": dict(window_strides=(1, 1), padding=((1, 1), (1, 1))),
    "3x3 stride 2 (UNet downsample)": dict(window_strides=(2, 2), padding=((0, 1), (0, 1))),
    "3x3 stride 2 symmetric": dict(window_strides=(2, 2), padding=((1, 1), (1, 1))),
    "dilated, SAME": dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2)),
}
NHWC = ("NHWC", "HWIO", "NHWC")


def _inputs(kernel: int = 3) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 12, 12, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 6, 10)), jnp.float32)
    return x, w


def _loss(conv):
    return lambda x, w, kw: jnp.sum(jnp.sin(conv(x, w, dimension_numbers=NHWC, **kw)))


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_equal_lax_bit_for_bit(name):
    kw = CASES[name]
    x, w = _inputs()
    ours = jax.jit(lambda x, w: cpu_convolution.conv_general_dilated(x, w, dimension_numbers=NHWC, **kw))
    theirs = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kw))
    np.testing.assert_array_equal(ours(x, w), theirs(x, w))
    grads = [
        jax.jit(jax.grad(lambda x, w, f=f: _loss(f)(x, w, kw), (0, 1)))(x, w)
        for f in (cpu_convolution.conv_general_dilated, lax.conv_general_dilated)
    ]
    for ours_grad, lax_grad in zip(*grads, strict=True):
        np.testing.assert_array_equal(ours_grad, lax_grad)


def _scanned_gradient(conv):
    """The kernel and input gradients summed over a scan of 3 batches, as the GRPO update's loops do."""
    loss = _loss(conv)
    kw = CASES["3x3 stride 2 (UNet downsample)"]

    def run(xs, w):
        def body(total, x):
            gx, gw = jax.grad(loss, (0, 1))(x, w, kw)
            return total + gw, gx

        return lax.scan(body, jnp.zeros_like(w), xs)

    x, w = _inputs()
    xs = jnp.stack([x, 2 * x, -x])
    return jax.jit(run), (xs, w)


def _dim_labels(compiled_text: str) -> set[str]:
    return set(re.findall(r"dim_labels=([^,\s]+)", compiled_text))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's canonical form")
def test_gradients_inside_a_scan_stay_canonical():
    canonical = {"b01f_01io->b01f"}
    fn, args = _scanned_gradient(cpu_convolution.conv_general_dilated)
    assert _dim_labels(fn.lower(*args).compile().as_text()) == canonical
    # What the fix is for: lax's own gradient leaves other forms inside the loop body.
    plain_fn, _ = _scanned_gradient(lax.conv_general_dilated)
    assert _dim_labels(plain_fn.lower(*args).compile().as_text()) - canonical
    (w_grad, x_grads), (plain_w_grad, plain_x_grads) = fn(*args), plain_fn(*args)
    np.testing.assert_allclose(w_grad, plain_w_grad, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(x_grads, plain_x_grads, rtol=1e-5, atol=1e-4)


def test_the_layers_conv_uses_it_on_cpu():
    from flax import nnx

    from slas_jax.models import layers

    conv = layers.conv(6, 10, 3, rngs=nnx.Rngs(0))
    expected = (
        cpu_convolution.conv_general_dilated if jax.default_backend() == "cpu" else lax.conv_general_dilated
    )
    assert conv.conv_general_dilated is expected
