"""Arrays created or placed straight onto their shardings (slas_jax.placement): the same values as the old
path (eager creation, then device_put), each leaf on its target sharding, frozen models in bfloat16 and
sharded over fsdp."""

import jax
import jax.numpy as jnp
import numpy as np
from engine_harness import PARAMS, harness_config
from flax import nnx
from jax.sharding import PartitionSpec as P

from slas_jax import grpo, parallel, placement
from slas_jax.models import clip


def tiny_text_model() -> clip.CLIPTextModel:
    config = clip.CLIPTextConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
    )
    return clip.CLIPTextModel(config, rngs=nnx.Rngs(3))


def fsdp_mesh():
    return parallel.make_mesh(data=1, fsdp=8, tensor=1)


def assert_on(tree, shardings):
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)


def assert_bitwise(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_random_init_on_shardings_equals_eager_init_to_the_last_bit():
    mesh = fsdp_mesh()
    graphdef, state = placement.init_sharded(tiny_text_model, mesh)
    eager_graphdef, eager = nnx.split(tiny_text_model())
    assert graphdef == eager_graphdef
    # Same keys, same initialisers; inside one jit XLA folds normal(0.02)'s two constant factors
    # (sqrt(2) * erfinv(u) * 0.02) into one, so those leaves may differ in the last bit (1 ulp) only.
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(eager), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp=1)
    assert_on(state, placement.tree_shardings(eager, mesh))
    # The token embedding (vocab, embed) is split over fsdp on its embed axis, as the backbone's would be.
    embedding = state["text_model"]["embeddings"]["token_embedding"]["embedding"][...]
    assert embedding.sharding.spec == P("tensor", "fsdp")  # (vocab, embed); tensor has one device here


def test_train_state_created_on_its_shardings_equals_the_device_put_path():
    config = harness_config({"loss": {"kl_beta": 0.1}}, prompts=2)
    tx = grpo.make_optimizer(config)
    mesh = fsdp_mesh()
    frozen = {"tokens": jnp.arange(4)}
    old = grpo.init_train_state(jax.tree.map(jnp.copy, PARAMS), frozen, tx, config)
    frozen_shardings = placement.tree_shardings(frozen, mesh)
    state, shardings = placement.init_state(
        jax.tree.map(jnp.copy, PARAMS), {"tokens": jnp.arange(4)}, tx, config, mesh, frozen_shardings
    )
    expected = grpo.state_shardings(old, parallel.state_shardings(PARAMS, mesh), frozen_shardings, mesh)
    assert_bitwise(state, old)
    assert_on(state, expected)
    assert jax.tree.structure(shardings) == jax.tree.structure(expected)
    # Adam's first moment of a conv kernel (3, 3, in 3, out 16) lives on the kernel's shards, not whole.
    mu = state.opt_state[1][0].mu["conv_out"]["kernel"][...]
    kernel = state.params["conv_out"]["kernel"][...]
    assert mu.sharding == kernel.sharding and kernel.sharding.spec != P()


def test_frozen_models_in_bfloat16_are_sharded_over_fsdp():
    mesh = fsdp_mesh()
    _, text = nnx.split(tiny_text_model())
    frozen = {"text": text, "uncond_tokens": jnp.zeros((1, 8), jnp.int32)}
    placed, shardings = placement.place_frozen(frozen, "bfloat16", mesh)
    assert_on(placed, shardings)
    floats = jax.tree.leaves(placed["text"])
    assert floats and all(x.dtype == jnp.bfloat16 for x in floats)
    assert placed["uncond_tokens"].dtype == jnp.int32 and placed["uncond_tokens"].sharding.spec == P()
    sharded = [x for x in floats if "fsdp" in jax.tree.leaves(tuple(x.sharding.spec))]
    # Every 2-D weight with an embed axis is split over the 8 fsdp devices: each holds 1/8 of it.
    assert len(sharded) >= 4  # the q, k, v and out projections at least
    for x in sharded:
        assert x.addressable_shards[0].data.size * 8 == x.size
    np.testing.assert_array_equal(
        np.asarray(placed["text"]["text_model"]["final_layer_norm"]["scale"][...], np.float32),
        np.asarray(text["text_model"]["final_layer_norm"]["scale"][...].astype(jnp.bfloat16), np.float32),
    )


def test_frozen_models_stay_float32_by_default():
    mesh = fsdp_mesh()
    _, text = nnx.split(tiny_text_model())
    placed, _ = placement.place_frozen({"text": text}, "float32", mesh)
    assert_bitwise(placed["text"], text)
