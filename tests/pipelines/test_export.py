"""Policy exports of diffusers-based models as diffusers pipeline folders: a trained (here: perturbed) UNet
of a tiny SD folder and transformer of a tiny FLUX folder, written by ``weights.export_policy``, load in
diffusers' ``from_pretrained`` (the backbone alone and the whole pipeline) and predict what ours predicts;
our converter reads the export back bit for bit; a converted source folder exports through the diffusers
folder it came from."""

import json
import os
from pathlib import Path

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from engine_harness import flat
from flax import nnx
from tiny_checkpoints import save_tiny_flux, save_tiny_sd
from tiny_models import flux_transformer_inputs

from slas_jax.config import load_config
from slas_jax.convert import convert_pipeline
from slas_jax.models import flux
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import build_pipeline
from slas_jax.pipelines.components import MARKER, load_component
from slas_jax.weights import DIFFUSERS_DIR, export_policy, read_metadata

PARITY = 1e-4  # the pipeline parity tests' tolerance: max |error| < 1e-4 x max(1, max |reference|)


def assert_close(what: str, got, want) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err, tol = float(np.abs(got - want).max()), PARITY * max(1.0, float(np.abs(want).max()))
    print(f"diffusers export parity, {what}: max abs error {err:.3g} (tolerance {tol:.3g})")
    assert err < tol, f"{what}: max abs error {err:.3g} >= {tol:.3g}"


def trained(params, seed: int = 0):
    """``params`` moved by 0.05 x standard-normal noise: a policy that is not the source's backbone, so that
    an export copying the source (or an identity mapping) cannot match."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), params)


def export(folder: Path, values: dict, bundle, policy) -> Path:
    """``export_policy`` of ``policy`` (the backbone of ``bundle``) under the config ``values``."""
    export_policy(folder, load_config(values), policy, bundle.frozen, {"step": 1})
    return folder


def assert_reads_back_bitwise(folder: Path, component: str, policy) -> None:
    """Our converter on the export gives the exported parameters exactly."""
    module = load_component(folder / DIFFUSERS_DIR, component, dtype=jnp.float32)
    np.testing.assert_array_equal(flat(nnx.state(module)), flat(policy))


def sd_values(checkpoint: Path) -> dict:
    return {"model": {"family": "unet", "checkpoint": str(checkpoint), "resolution": 16}}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny SD folder, its pipeline and a perturbed UNet of it."""
    folder = tmp_path_factory.mktemp("sd") / "sd-tiny"
    save_tiny_sd(folder, resolution=16)
    bundle = build_pipeline(load_config(sd_values(folder)))
    return folder, bundle, trained(bundle.params)


def test_sd_policy_loads_in_diffusers_and_predicts_as_ours(sd, tmp_path):
    source, bundle, policy = sd
    folder = export(tmp_path / "policy", sd_values(source), bundle, policy)
    assert read_metadata(folder)["diffusers"] == DIFFUSERS_DIR
    exported = folder / DIFFUSERS_DIR
    assert sorted(p.name for p in (exported / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert (exported / "vae").is_symlink() and (exported / "model_index.json").is_symlink()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4), dtype=np.float32)
    context = rng.standard_normal((2, 77, 16), dtype=np.float32)
    t = np.array([999.0, 321.0], np.float32)
    ours = jax.jit(bundle.pipeline.denoise)(policy, x, t, context)
    unet = diffusers.UNet2DConditionModel.from_pretrained(exported, subfolder="unet")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(exported)
    for what, model in (("UNet2DConditionModel", unet), ("StableDiffusionPipeline.unet", pipe.unet)):
        with torch.no_grad():
            want = model(
                torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                torch.from_numpy(t),
                encoder_hidden_states=torch.from_numpy(context),
            ).sample
        assert_close(f"SD {what} noise prediction", ours, want.permute(0, 2, 3, 1).numpy())
    assert_reads_back_bitwise(folder, "unet", policy)


def test_flux_policy_loads_in_diffusers_and_predicts_as_ours(tmp_path):
    source = tmp_path / "FLUX.1-tiny"
    save_tiny_flux(source, resolution=32)
    values = {
        "model": {"family": "flux", "checkpoint": str(source), "resolution": 32},
        "sampler": {"name": "flow_sde"},
    }
    bundle = build_pipeline(load_config(values))
    policy = trained(bundle.params)
    folder = export(tmp_path / "policy", values, bundle, policy)
    exported = folder / DIFFUSERS_DIR
    assert (exported / "text_encoder_2").is_symlink() and (exported / "tokenizer_2").is_symlink()
    model = diffusers.FluxTransformer2DModel.from_pretrained(exported, subfolder="transformer")
    pipe = FluxPipeline.from_pretrained(exported)
    config = flux.FluxConfig.from_dict(json.loads((exported / "transformer" / "config.json").read_text()))
    ours = nnx.merge(nnx.graphdef(flux.FluxTransformer2DModel(config, rngs=nnx.Rngs(0))), policy)
    inputs = flux_transformer_inputs(config)
    got = np.asarray(nnx.jit(lambda m, kw: m(**kw))(ours, inputs))
    for what, reference in (
        ("FluxTransformer2DModel", model),
        ("FluxPipeline.transformer", pipe.transformer),
    ):
        with torch.no_grad():
            want = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).sample.numpy()
        assert_close(f"FLUX {what} velocity", got, want)
    assert_reads_back_bitwise(folder, "transformer", policy)


def test_a_converted_checkpoint_exports_through_its_diffusers_source(sd, tmp_path):
    """The export of a run on a converted folder is the one from its diffusers source: the same tensors,
    links to the source's components; once the source is gone, the export is refused in one line."""
    source, bundle, policy = sd
    converted = tmp_path / "sd-tiny-jax"
    convert_pipeline(source, converted, log=lambda _: None)
    exports = {
        name: export(tmp_path / name, sd_values(checkpoint), bundle, policy) / DIFFUSERS_DIR
        for name, checkpoint in (("from_source", source), ("from_converted", converted))
    }
    weights = [(e / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() for e in exports.values()]
    assert weights[0] == weights[1]
    assert os.readlink(exports["from_converted"] / "text_encoder") == str(source.absolute() / "text_encoder")
    marker = json.loads((converted / MARKER).read_text())
    (converted / MARKER).write_text(json.dumps({**marker, "source": str(tmp_path / "moved")}))
    with pytest.raises(ConversionError, match=r"was made from the diffusers folder .*moved, which is gone"):
        export(tmp_path / "again", sd_values(converted), bundle, policy)
