"""layers.attention: the CPU batch-chunked path computes the same attention, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slas_jax.models import layers


def _inputs(batch=6, q_len=5, kv_len=7, heads=2, head_dim=4):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, kv_len, heads, head_dim))
    v = jax.random.normal(keys[2], (batch, kv_len, heads, head_dim))
    bias = jax.random.normal(keys[3], (batch, heads, q_len, kv_len))
    return q, k, v, bias


def test_cpu_chunk_is_the_largest_divisor_that_fits(monkeypatch):
    monkeypatch.setattr(layers, "ATTENTION_CHUNK_BYTES", 1000)
    assert layers._cpu_batch_chunk(12, 250) == 4
    assert layers._cpu_batch_chunk(7, 250) == 1
    assert layers._cpu_batch_chunk(12, 5000) == 1
    assert layers._cpu_batch_chunk(3, 10) == 3


@pytest.mark.parametrize(
    "extras",
    [
        {},
        {"bias": "per_sample"},
        {"mask": "causal"},
        {"mask": "per_sample", "bias": "shared"},
    ],
)
def test_chunked_attention_equals_whole_batch(monkeypatch, extras):
    q, k, v, bias = _inputs()
    kwargs = {}
    if extras.get("bias") == "per_sample":
        kwargs["bias"] = bias
    if extras.get("bias") == "shared":
        kwargs["bias"] = bias[:1]
    if extras.get("mask") == "causal":
        kwargs["mask"] = jnp.tril(jnp.ones((5, 7), bool))[None, None]
    if extras.get("mask") == "per_sample":
        kwargs["mask"] = bias > -0.5

    def loss(q, k, v):
        return jnp.sum(jnp.sin(layers.attention(q, k, v, **kwargs)))

    whole = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    # 2 rows of logits (heads x q x kv float32) per chunk: 3 chunks of the batch of 6.
    monkeypatch.setattr(layers, "ATTENTION_CHUNK_BYTES", 2 * 4 * 2 * 5 * 7)
    assert layers._cpu_batch_chunk(6, 4 * 2 * 5 * 7) == 2
    chunked = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    for a, b in zip(chunked[1], whole[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
