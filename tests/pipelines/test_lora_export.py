"""LoRA policy exports: a tiny FLUX folder's transformer with trained (here: random, B != 0) adapters, written
by ``weights.export_policy``, is a link to the source's transformer plus ``pytorch_lora_weights.safetensors``
in peft's names and metadata, and a weights folder of the adapters alone that restores onto the source's
base; loaded by diffusers' ``FluxPipeline.load_lora_weights`` the adapters predict what our LoRA model
predicts."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from engine_harness import flat, record_trained_state
from flax import nnx
from safetensors import safe_open
from tiny_checkpoints import save_tiny_flux
from tiny_models import flux_transformer_inputs

from slas_jax import lora
from slas_jax.config import load_config
from slas_jax.models import flux
from slas_jax.pipelines import build_pipeline
from slas_jax.pipelines.export import LORA_METADATA_KEY, LORA_WEIGHTS
from slas_jax.train import run
from slas_jax.weights import DIFFUSERS_DIR, export_policy, load_policy, stored_parts

PARITY = 1e-4  # max |error| < 1e-4 x max(1, max |reference|), as the pipeline parity tests
RANK, ALPHA = 4, 8.0
TARGETS = (r"attn\.to_(q|k|v)$", r"to_out\.0$", r"ff\.proj_in$")
"""DanceGRPO's FLUX targets (to_q / to_k / to_v / to_out.0, in both block kinds), and the double-stream
blocks' first feed-forward Linear, whose diffusers name (ff.net.0.proj) differs from ours."""


def assert_close(what: str, got, want) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err, tol = float(np.abs(got - want).max()), PARITY * max(1.0, float(np.abs(want).max()))
    print(f"LoRA export parity, {what}: max abs error {err:.3g} (tolerance {tol:.3g})")
    assert err < tol, f"{what}: max abs error {err:.3g} >= {tol:.3g}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(values, policy, weights folder, inputs, velocity): a tiny FLUX folder's LoRA pipeline with random
    adapters (A and B), the policy export of that backbone, transformer inputs and our LoRA transformer's
    velocity on them."""
    root = tmp_path_factory.mktemp("flux_lora")
    source = root / "FLUX.1-tiny"
    save_tiny_flux(source, resolution=32)
    values = {
        "model": {
            "family": "flux",
            "checkpoint": str(source),
            "resolution": 32,
            "lora": {"rank": RANK, "alpha": ALPHA, "targets": TARGETS},
        },
        "sampler": {"name": "flow_sde"},
    }
    config = load_config(values)
    bundle = build_pipeline(config)
    adapters, base = lora.split(bundle.params)
    rng = np.random.default_rng(0)
    policy = lora.merge(
        jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape, np.float32), adapters), base
    )
    folder = root / "policy"
    export_policy(folder, config, policy, bundle.frozen, {"step": 1})
    transformer = flux.FluxConfig.from_dict(json.loads((source / "transformer" / "config.json").read_text()))
    module = flux.FluxTransformer2DModel(transformer, rngs=nnx.Rngs(0))
    lora.attach(module, config.model.lora)
    inputs = flux_transformer_inputs(transformer)
    velocity = np.asarray(nnx.jit(lambda m, kw: m(**kw))(nnx.merge(nnx.graphdef(module), policy), inputs))
    return values, policy, folder, inputs, velocity


def diffusers_velocity(transformer: torch.nn.Module, inputs: dict) -> np.ndarray:
    with torch.no_grad():
        return transformer(**{k: torch.from_numpy(v) for k, v in inputs.items()}).sample.numpy()


def test_adapter_file_holds_every_adapted_layer_in_peft_names(exported):
    _, policy, folder, _, _ = exported
    path = folder / DIFFUSERS_DIR / LORA_WEIGHTS
    with safe_open(str(path), "np") as f:
        names = sorted(f.keys())
        metadata = json.loads(f.metadata()[LORA_METADATA_KEY])
    modules = sorted({name.removeprefix("transformer.").rsplit(".lora_", 1)[0] for name in names})
    # One double- and one single-stream block: q, k, v in both, to_out.0 and ff.net.0.proj in the double.
    assert modules == [
        "single_transformer_blocks.0.attn.to_k",
        "single_transformer_blocks.0.attn.to_q",
        "single_transformer_blocks.0.attn.to_v",
        "transformer_blocks.0.attn.to_k",
        "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_v",
        "transformer_blocks.0.ff.net.0.proj",
    ]
    assert names == sorted(f"transformer.{m}.lora_{ab}.weight" for m in modules for ab in "AB")
    # The base is the source's backbone: linked, not copied; the weights folder holds the adapters alone and
    # restores onto the source's base bit for bit.
    assert (folder / DIFFUSERS_DIR / "transformer").is_symlink()
    assert stored_parts(folder) == (False, True)
    np.testing.assert_array_equal(flat(load_policy(folder)[1].params), flat(policy))
    assert metadata == {
        "transformer.r": RANK,
        "transformer.lora_alpha": ALPHA,
        "transformer.target_modules": modules,
    }


def test_flux_pipeline_load_lora_weights_predicts_as_ours(exported):
    """diffusers' own LoRA loading (peft): FluxPipeline.load_lora_weights on the export folder; the export's
    transformer is the base one, which the adapters change."""
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (in the test extra)")
    _, _, folder, inputs, ours = exported
    export = folder / DIFFUSERS_DIR
    pipe = FluxPipeline.from_pretrained(export)
    base = diffusers_velocity(pipe.transformer, inputs)
    pipe.load_lora_weights(export)
    adapted = diffusers_velocity(pipe.transformer, inputs)
    assert np.abs(adapted - base).max() > 1e-2, "the adapters must change the prediction"
    assert_close("FluxPipeline.load_lora_weights transformer", ours, adapted)


def test_a_lora_run_on_the_folder_trains_only_adapters_and_diffusers_loads_its_export(
    exported, tmp_path, monkeypatch
):
    """The acceptance run: train.run with LoRA on the tiny FLUX folder (brightness, two steps, an export at the
    end). Its optimizer state holds the adapters' Adam moments alone, the adapters move, and the exported
    adapter file loaded by diffusers predicts as the trained policy."""
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (in the test extra)")
    values, _, _, inputs, _ = exported
    trained = record_trained_state(monkeypatch)
    run_values = {
        **values,
        "sampler": {"name": "flow_sde", "num_steps": 3, "schedule": "shift", "shift": 3.0},
        "loss": {"timestep_fraction": 0.5},
        "optim": {"learning_rate": 1e-2},
        "train": {
            "num_steps": 2,
            "prompts_per_step": 2,
            "group_size": 2,
            "micro_batch_size": 2,
            "export_every": 2,
            "output_dir": str(tmp_path),
        },
        "reward": {"name": "brightness"},
        "data": {"name": "brightness"},
    }
    history = run(load_config(run_values))
    assert len(history) == 2 and all(np.isfinite(r["policy_loss"]) for r in history)
    state = trained["state"]
    adapters, _ = lora.split(state.params)
    adapter_shapes = {x.shape for x in jax.tree.leaves(adapters)}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert moments and {x.shape for x in moments} <= adapter_shapes
    assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(adapters))  # Adam's mu, nu
    assert max(float(np.abs(b).max()) for b in jax.tree.leaves(adapters) if b.shape[-2] == RANK) > 0
    export = tmp_path / "policy" / "step_2" / DIFFUSERS_DIR
    pipe = FluxPipeline.from_pretrained(export)
    pipe.load_lora_weights(export)
    source = values["model"]["checkpoint"]
    transformer = flux.FluxConfig.from_dict(
        json.loads((Path(source) / "transformer" / "config.json").read_text())
    )
    module = flux.FluxTransformer2DModel(transformer, rngs=nnx.Rngs(0))
    lora.attach(module, load_config(run_values).model.lora)
    ours = nnx.jit(lambda m, kw: m(**kw))(nnx.merge(nnx.graphdef(module), state.params), inputs)
    assert_close(
        "trained LoRA policy, FluxPipeline.load_lora_weights",
        ours,
        diffusers_velocity(pipe.transformer, inputs),
    )
