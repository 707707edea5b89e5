"""``python -m slas_jax.convert``: tiny SD and FLUX diffusers folders written by save_pretrained convert into
Orbax states that load into the same parameters (and outputs) as the diffusers folders, without reading
safetensors; bad inputs end with one line on stderr and exit code 2."""

import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runner import run_module
from tiny_checkpoints import save_tiny_flux, save_tiny_sd

from slas_jax import convert as convert_cli
from slas_jax.config import load_config
from slas_jax.models import conversion
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines.components import MARKER, load_component
from slas_jax.pipelines.flux import load_flux_pipeline
from slas_jax.pipelines.sd import load_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 16


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionPipeline folder (DDIM scheduler) written by save_pretrained."""
    folder = tmp_path_factory.mktemp("sd") / "sd-tiny"
    save_tiny_sd(folder, resolution=RESOLUTION)
    return folder


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory) -> Path:
    """A tiny random FluxPipeline folder (CLIP, T5, guidance-embedded transformer, 16-channel VAE)."""
    folder = tmp_path_factory.mktemp("flux") / "flux-tiny"
    save_tiny_flux(folder, resolution=RESOLUTION)
    return folder


@pytest.fixture(scope="module")
def sd_converted(sd_folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("converted") / "sd-tiny-jax"
    result = run_module("slas_jax.convert", sd_folder, out, env={"JAX_PLATFORMS": "cpu"})
    return out, result


def assert_same_leaves(what: str, ours, theirs) -> None:
    ours_flat, ours_tree = jax.tree.flatten(ours)
    theirs_flat, theirs_tree = jax.tree.flatten(theirs)
    assert ours_tree == theirs_tree, f"{what}: different trees"
    for a, b in zip(ours_flat, theirs_flat, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


@pytest.fixture
def no_safetensors(monkeypatch):
    """Loading a converted folder must not read safetensors."""

    def refuse(*args, **kwargs):
        raise AssertionError("safetensors read while loading a converted folder")

    monkeypatch.setattr(conversion, "read_weights", refuse)
    monkeypatch.setattr(conversion, "read_safetensors", refuse)


def test_cli_writes_a_converted_folder(sd_folder, sd_converted):
    out, result = sd_converted
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"done: StableDiffusionPipeline (unet, text_encoder, vae) converted into {out}" in result.stdout
    marker = json.loads((out / MARKER).read_text())
    assert marker["format_version"] == 1 and marker["pipeline"] == "StableDiffusionPipeline"
    assert marker["components"] == ["unet", "text_encoder", "vae"]
    assert marker["source"] == str(sd_folder.absolute()) and all(n > 0 for n in marker["parameters"].values())
    for copied in ("model_index.json", "unet/config.json", "text_encoder/config.json", "vae/config.json"):
        assert (out / copied).read_bytes() == (sd_folder / copied).read_bytes(), copied
    for folder in ("tokenizer", "scheduler"):
        assert sorted(p.name for p in (out / folder).iterdir()) == sorted(
            p.name for p in (sd_folder / folder).iterdir()
        )
    assert not list(out.rglob("*.safetensors"))
    assert all((out / name / "state").is_dir() for name in marker["components"])


def sd_values(checkpoint: Path) -> dict:
    return {
        "model": {"checkpoint": str(checkpoint), "resolution": RESOLUTION},
        "sampler": {"num_steps": 2, "guidance_scale": 2.0},
    }


@pytest.fixture(scope="module")
def sd_from_diffusers(sd_folder):
    return load_sd_pipeline(load_config(sd_values(sd_folder)))


def pipeline_outputs(bundle) -> tuple[jax.Array, ...]:
    """Text features, a noise prediction and a decode of fixed inputs, through the bundle's own functions."""

    @jax.jit
    def outputs(params, frozen, tokens, x):
        cond, uncond = bundle.pipeline.encode(frozen, {"tokens": tokens})
        t = jnp.full((1,), bundle.pipeline.sampler.model_time(0))
        return cond, uncond, bundle.pipeline.denoise(params, x, t, cond), bundle.pipeline.decode(frozen, x)

    x = jax.random.normal(jax.random.PRNGKey(0), (1, *bundle.pipeline.latent_shape))
    return outputs(bundle.params, bundle.frozen, bundle.tokenize(["a cat"]), x)


def test_sd_loads_the_same_both_ways(sd_from_diffusers, sd_converted, no_safetensors):
    out, result = sd_converted
    assert result.returncode == 0, result.stderr[-3000:]
    restored = load_sd_pipeline(load_config(sd_values(out)))
    assert_same_leaves("unet", restored.params, sd_from_diffusers.params)
    assert_same_leaves("text encoder and vae", restored.frozen, sd_from_diffusers.frozen)
    assert restored.pipeline.latent_shape == sd_from_diffusers.pipeline.latent_shape
    np.testing.assert_array_equal(
        restored.pipeline.sampler.timesteps, sd_from_diffusers.pipeline.sampler.timesteps
    )
    for got, want in zip(pipeline_outputs(restored), pipeline_outputs(sd_from_diffusers), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_flux_converts_and_loads_the_same_both_ways(flux_folder, tmp_path):
    out = tmp_path / "flux-tiny-jax"
    marker = convert_cli.convert_pipeline(flux_folder, out, log=lambda _: None)
    assert marker["components"] == ["transformer", "text_encoder", "text_encoder_2", "vae"]
    assert (out / "tokenizer_2").is_dir() and (out / "text_encoder_2" / "state").is_dir()
    values = {
        "model": {"family": "flux", "resolution": RESOLUTION},
        "sampler": {"name": "flow_sde", "num_steps": 2, "schedule": "dynamic"},
    }
    from_diffusers = load_flux_pipeline(
        load_config({**values, "model": {**values["model"], "checkpoint": str(flux_folder)}})
    )
    from_converted = load_flux_pipeline(
        load_config({**values, "model": {**values["model"], "checkpoint": str(out)}})
    )
    assert_same_leaves("flux transformer", from_converted.params, from_diffusers.params)
    assert_same_leaves("flux frozen (CLIP, T5, VAE)", from_converted.frozen, from_diffusers.frozen)


def run_main(capsys, *args: str) -> tuple[int, list[str]]:
    code = convert_cli.main(["convert", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_inputs_fail_with_one_line(capsys, tmp_path, sd_folder, sd_converted):
    code, lines = run_main(capsys, str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert code == 2 and lines == [f"error: diffusers folder {tmp_path / 'nothing'} does not exist"]

    code, lines = run_main(capsys, str(tmp_path), str(tmp_path / "out"))
    assert (
        code == 2
        and len(lines) == 1
        and "no model_index.json" in lines[0]
        and "CompVis/stable-diffusion-v1-4" in lines[0]
    )

    other = tmp_path / "sdxl"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    code, lines = run_main(capsys, str(other), str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1
    assert (
        "'StableDiffusionXLPipeline' is not supported; supported: StableDiffusionPipeline, FluxPipeline"
        in lines[0]
    )

    out, _ = sd_converted
    code, lines = run_main(capsys, str(sd_folder), str(out))
    assert code == 2 and lines == [
        f"error: output folder {out} already exists and is not empty; choose a new folder"
    ]

    # A converted folder missing a component's state, edited after conversion, or of another format version.
    broken = tmp_path / "broken"
    convert_cli.convert_pipeline(sd_folder, broken, log=lambda _: None)
    for path in sorted((broken / "vae" / "state").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (broken / "vae" / "state").rmdir()
    with pytest.raises(
        ConversionError,
        match=r"vae of converted folder .*: .*state is missing; re-run python -m slas_jax\.convert",
    ):
        load_component(broken, "vae", dtype=jnp.float32)
    config_path = broken / "text_encoder" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "intermediate_size": 48}))
    with pytest.raises(
        ConversionError, match=r"fc1\.bias\.value is stored as \(32,\) float32, the config gives \(48,\)"
    ):
        load_component(broken, "text_encoder", dtype=jnp.float32)
    (broken / MARKER).write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ConversionError, match="format_version 0, this slas_jax reads 1"):
        load_component(broken, "unet", dtype=jnp.float32)
