"""LoRA (``model.lora``, ``slas_jax.lora``) on the random pixel-space FLUX testbed: the adapted model is the
base model bit for bit at initialisation; a GRPO step trains the adapters alone, keeps optimizer state for
them alone and no reference copy, its first ratio is 1 and its KL starts at 0; the adapters' shardings follow
their base kernels' logical axes; the config refuses bad LoRA settings in one line; the recipes validate."""

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tiny_models import PIXEL_FLUX

from slas_jax import grpo, lora, parallel
from slas_jax.config import ConfigError, load_config
from slas_jax.pipelines import build_pipeline
from slas_jax.pipelines.flux import random_flux_pipeline
from slas_jax.weights import export_policy, load_policy

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("a", "red", "cat", "bright", "top")
TARGETS = (r"attn\.to_(q|k|v)$", r"to_out\.0$")
"""DanceGRPO's FLUX targets: q, k, v of both block kinds and the double-stream output projection."""


def flux_values(**lora_section) -> dict:
    """The random pixel-space FLUX testbed (one block of each kind, width 16), with ``model.lora``."""
    return {
        "model": {
            "family": "flux",
            **PIXEL_FLUX,
            "lora": lora_section,
        },
        "sampler": {"name": "flow_sde", "schedule": "shift", "shift": 3.0, "num_steps": 3},
        "loss": {"timestep_fraction": 0.5, "kl_beta": 0.1},
        "optim": {"learning_rate": 1e-2},
        "train": {"prompts_per_step": 2, "group_size": 2, "micro_batch_size": 2},
    }


def lora_values(**overrides) -> dict:
    return flux_values(**{"rank": 2, "alpha": 4.0, "targets": TARGETS, **overrides})


def bundle_of(values: dict):
    return random_flux_pipeline(load_config(values), WORDS, max_length=8)


def brightness(_frozen, images, _batch):
    return images.mean(axis=(1, 2, 3))


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def stepped():
    """(config, state before, state after, metrics) of one jitted GRPO step (two optimizer updates) of the
    LoRA testbed with the KL term on."""
    config = load_config(lora_values())
    bundle = bundle_of(lora_values())
    tx = grpo.make_optimizer(config)
    state = grpo.init_train_state(bundle.params, bundle.frozen, tx, config)
    step = jax.jit(grpo.make_train_step(bundle.pipeline, brightness, tx, config))
    tokens = bundle.tokenize(["a red cat", "bright top"])
    before = jax.tree.map(jnp.copy, state)
    after, metrics = step(state, {"tokens": tokens}, jax.random.PRNGKey(0))
    return config, before, after, metrics


def test_the_adapted_model_is_the_base_model_bit_for_bit_at_initialisation():
    plain, adapted = bundle_of(flux_values()), bundle_of(lora_values())
    adapters, base = lora.split(adapted.params)
    assert sorted(lora.adapted_layers(adapted.params)) == [
        "single_transformer_blocks.attn.to_k",
        "single_transformer_blocks.attn.to_q",
        "single_transformer_blocks.attn.to_v",
        "transformer_blocks.attn.to_k",
        "transformer_blocks.attn.to_out.0",
        "transformer_blocks.attn.to_q",
        "transformer_blocks.attn.to_v",
    ]
    # Same seed, same base weights under the same paths; B = 0 and A != 0.
    np.testing.assert_array_equal(grpo_flat(base), grpo_flat(plain.params))
    for a, b in lora.adapted_layers(adapted.params).values():
        assert a.shape[-1] == b.shape[-2] == 2 and np.abs(np.asarray(a)).min() > 0 and not np.any(b)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3), np.float32))
    cond = (jnp.asarray(rng.standard_normal((2, 8, 16), np.float32)), jnp.ones((2, 16)))
    t = jnp.array([0.9, 0.3])
    denoise = jax.jit(adapted.pipeline.denoise)
    want = jax.jit(plain.pipeline.denoise)(plain.params, x, t, cond)
    np.testing.assert_array_equal(np.asarray(denoise(adapted.params, x, t, cond)), np.asarray(want))
    moved = lora.merge(jax.tree.map(lambda v: v + 0.1, adapters), base)
    assert np.abs(np.asarray(denoise(moved, x, t, cond) - want)).max() > 1e-3


def grpo_flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_first_step_has_ratio_one_and_kl_zero_then_the_policy_moves(stepped):
    _, _, _, metrics = stepped
    assert float(metrics["first_ratio_max_dev"]) < 1e-5
    # The second optimizer update re-scores under the adapters the first one changed.
    assert float(metrics["ratio_max_dev"]) > 1e-4 and float(metrics["kl"]) > 0
    # Policy and reference (the base model) agree at initialisation up to the float32 rounding of two
    # differently fused computations (~4e-16 here).
    assert abs(float(metrics["first_kl"])) < 1e-6 * float(metrics["kl"]), "reference != initial policy"


def test_only_the_adapters_train_and_hold_optimizer_state(stepped):
    _, before, after, _ = stepped
    adapters_before, base_before = lora.split(before.params)
    _, base_after = lora.split(after.params)
    np.testing.assert_array_equal(grpo_flat(base_after), grpo_flat(base_before))
    for b in (b for _, b in lora.adapted_layers(after.params).values()):
        assert np.abs(np.asarray(b)).max() > 1e-4, "every B must leave zero"
    adapter_shapes = {x.shape for x in jax.tree.leaves(adapters_before)}
    shaped = [x for x in jax.tree.leaves(after.opt_state) if x.ndim]
    assert shaped and {x.shape for x in shaped} <= adapter_shapes
    # AdamW's mu and nu: twice the adapters, plus scalar counters; a small part of the backbone.
    assert nbytes(shaped) == 2 * nbytes(adapters_before)
    assert nbytes(after.opt_state) < 0.35 * nbytes(before.params)


def test_the_kl_reference_is_the_base_model_not_a_copy(stepped):
    config, _, after, _ = stepped
    assert config.loss.kl_beta > 0 and after.ref_params is None


def test_adapter_shardings_follow_their_kernels_logical_axes():
    """A on the kernel's input axis, B on its output axis, the rank replicated; the optimizer state on the
    adapters' shardings."""
    config = load_config(lora_values())
    bundle = bundle_of(lora_values())
    mesh = parallel.make_mesh(data=1, fsdp=2, tensor=4)
    shardings = parallel.state_shardings(bundle.params, mesh)
    specs = {
        ".".join(str(getattr(k, "key", k)) for k in path[:-1]): leaf.spec
        for path, leaf in jax.tree_util.tree_flatten_with_path(shardings)[0]
    }
    seen = 0
    for module in lora.adapted_layers(bundle.params):
        kernel = specs[f"{module}.kernel"]
        assert kernel != P(), f"{module}'s kernel must be sharded for this test to mean something"
        assert specs[f"{module}.lora_a"] == P(*kernel[:-1], None)
        assert specs[f"{module}.lora_b"] == P(*kernel[:-2], None, kernel[-1])
        seen += 1
    assert seen == 7
    tx = grpo.make_optimizer(config)
    state = grpo.init_train_state(bundle.params, bundle.frozen, tx, config)
    state_shardings = grpo.state_shardings(
        state, shardings, jax.tree.map(lambda _: None, bundle.frozen), mesh
    )
    adapter_shardings = jax.tree.leaves(lora.split(shardings)[0])
    mu = state_shardings.opt_state[1][0].mu
    assert jax.tree.leaves(mu) == adapter_shardings


def test_a_lora_run_starts_from_a_weights_folder_without_adapters(tmp_path):
    """model.init_checkpoint holding a plain backbone: its weights become the base, the adapters start
    fresh (B = 0); the exported LoRA policy then restores base and adapters."""
    plain = build_pipeline(load_config(flux_values()), WORDS)
    stored = jax.tree.map(lambda x: x + 0.01, plain.params)
    export_policy(tmp_path / "base", load_config(flux_values()), stored, plain.frozen, {}, WORDS)
    values = lora_values()
    values["model"]["init_checkpoint"] = str(tmp_path / "base")
    adapted = build_pipeline(load_config(values), WORDS)
    adapters, base = lora.split(adapted.params)
    np.testing.assert_array_equal(grpo_flat(base), grpo_flat(stored))
    assert not any(np.any(b) for _, b in lora.adapted_layers(adapted.params).values())
    trained = lora.merge(jax.tree.map(lambda x: x + 0.5, adapters), base)
    export_policy(tmp_path / "policy", load_config(values), trained, adapted.frozen, {}, WORDS)
    np.testing.assert_array_equal(grpo_flat(load_policy(tmp_path / "policy")[1].params), grpo_flat(trained))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {**lora_values(), "optim": {"trainable": ("attn",)}},
            r"config.optim.trainable: does not combine with model.lora",
        ),
        (lora_values(dropout=0.1), r"config.model.lora.dropout: must be 0 \(the rollout and the GRPO"),
        (lora_values(alpha=0.0), r"config.model.lora.alpha: must be > 0 with lora.rank > 0"),
        (lora_values(targets=()), r"config.model.lora.targets: must name the Linear layers"),
        (flux_values(targets=("to_q",)), r"config.model.lora.targets: applies with lora.rank > 0 only"),
        (lora_values(targets=("(to_q",)), r"config.model.lora.targets: '\(to_q' is not a regular expression"),
    ],
)
def test_bad_lora_settings_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(values)


def test_targets_that_match_no_linear_layer_are_refused():
    with pytest.raises(ConfigError, match=r"config.model.lora.targets: 'norm_q' matches no Linear layer"):
        bundle_of(lora_values(targets=(r"attn\.to_q$", "norm_q")))


@pytest.mark.parametrize(
    ("name", "rank", "alpha"), [("flux_lora_tpu.py", 128, 256.0), ("sd_lora_tpu.py", 32, 64.0)]
)
def test_lora_recipes_validate_with_their_peers_rank_and_alpha(name, rank, alpha):
    config = load_config(runpy.run_path(str(ROOT / "configs" / name))["get_config"]())
    assert (config.model.lora.rank, config.model.lora.alpha) == (rank, alpha)
    assert config.optim.trainable == () and config.model.lora.targets


def test_flux_lora_recipe_targets_dancegrpos_modules():
    """DanceGRPO's FLUX LoRA: peft target_modules to_q / to_k / to_v / to_out.0 (every block kind)."""
    config = load_config(runpy.run_path(str(ROOT / "configs" / "flux_lora_tpu.py"))["get_config"]())
    adapted = []

    def build():  # abstractly: only the module paths matter
        module = _flux_module()
        adapted.extend(lora.attach(module, config.model.lora))
        return module

    nnx.eval_shape(build)
    assert sorted({path.split(".", 1)[1] for path in adapted}) == [
        "attn.to_k",
        "attn.to_out.0",
        "attn.to_q",
        "attn.to_v",
    ]


def _flux_module():
    from slas_jax.models import flux

    return flux.FluxTransformer2DModel(
        flux.FluxConfig(
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            axes_dims_rope=(2, 2, 4),
            joint_attention_dim=16,
            pooled_projection_dim=16,
        ),
        rngs=nnx.Rngs(0),
    )
