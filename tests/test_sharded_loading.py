"""A diffusers checkpoint read straight onto an fsdp mesh (``place``): the same values as the whole-array
load, each leaf on its target sharding, and every device's slice read and converted alone."""

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_checkpoints import save_tiny_flux

from slas_jax import parallel, placement
from slas_jax.models import flux


@pytest.fixture(scope="module")
def transformer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux")
    save_tiny_flux(folder)
    return folder / "transformer"


def test_flux_transformer_loads_onto_fsdp_shards_with_the_values_of_the_whole_load(
    transformer_folder, monkeypatch
):
    mesh = parallel.make_mesh(data=1, fsdp=8, devices=jax.devices()[:8])
    asked = []
    make_array = jax.make_array_from_callback

    def spying(shape, sharding, callback):
        def recorded(index):
            part = callback(index)
            asked.append((part.shape, sharding.shard_shape(shape)))
            return part

        return make_array(shape, sharding, recorded)

    monkeypatch.setattr(jax, "make_array_from_callback", spying)
    sharded = flux.load_flux_transformer(
        transformer_folder, place=lambda s: placement.tree_shardings(s, mesh)
    )
    monkeypatch.undo()
    whole = flux.load_flux_transformer(transformer_folder)

    state, reference = jax.tree.leaves(nnx.state(sharded)), jax.tree.leaves(nnx.state(whole))
    targets = jax.tree.leaves(placement.tree_shardings(nnx.state(whole), mesh))
    for x, y, target in zip(state, reference, targets, strict=True):
        assert x.sharding.is_equivalent_to(target, x.ndim)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Each device's callback returned its own shard only, never the whole parameter.
    assert asked and all(got == shard for got, shard in asked)
    split = [(got, x.shape) for x in state for got in [x.addressable_shards[0].data.shape] if got != x.shape]
    assert len(split) >= 4  # e.g. the stacked blocks' (layers, embed, heads) kernels, split on embed


def test_a_converted_folder_restores_onto_fsdp_shards(tmp_path):
    from test_sharded_init import tiny_text_model

    from slas_jax.pipelines.components import restore_module, save_state

    mesh = parallel.make_mesh(data=1, fsdp=8, devices=jax.devices()[:8])
    module = tiny_text_model()
    save_state(module, tmp_path / "state")
    restored = restore_module(
        tiny_text_model, tmp_path / "state", what="test", place=lambda s: placement.tree_shardings(s, mesh)
    )
    targets = jax.tree.leaves(placement.tree_shardings(nnx.state(module), mesh))
    pairs = zip(
        jax.tree.leaves(nnx.state(restored)), jax.tree.leaves(nnx.state(module)), targets, strict=True
    )
    for x, y, target in pairs:
        assert x.sharding.is_equivalent_to(target, x.ndim)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(x.addressable_shards[0].data.size * 8 == x.size for x in jax.tree.leaves(nnx.state(restored)))
