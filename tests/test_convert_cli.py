"""``python -m slas_jax.convert``: tiny SD and FLUX diffusers folders written by save_pretrained convert into
Orbax states that load into the same parameters (and outputs) as the diffusers folders, without reading
safetensors; bad inputs end with one line on stderr and exit code 2."""

import json
import string
import subprocess
from pathlib import Path

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from cli_runner import run_module
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

from slas_jax import convert as convert_cli
from slas_jax.config import load_config
from slas_jax.models import conversion
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines.components import MARKER, load_component
from slas_jax.pipelines.flux import load_flux_pipeline
from slas_jax.pipelines.sd import load_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 16


def clip_tokenizer(folder: Path) -> transformers.CLIPTokenizer:
    """A character-level CLIP BPE vocabulary (vocab.json + merges.txt); special tokens take the largest ids."""
    letters = string.ascii_lowercase
    vocab = [*letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def clip_text_encoder(tokenizer: transformers.CLIPTokenizer) -> transformers.CLIPTextModel:
    return transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=2,
        )
    )


def tiny_vae(latent_channels: int, **kwargs) -> diffusers.AutoencoderKL:
    return diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 8],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        **kwargs,
    )


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionPipeline folder (DDIM scheduler) written by save_pretrained."""
    tmp = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tmp / "tokenizer_source")
    unet = diffusers.UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(4),
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp / "sd-tiny")
    return tmp / "sd-tiny"


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory) -> Path:
    """A tiny random FluxPipeline folder (CLIP, T5, guidance-embedded transformer, 16-channel VAE)."""
    tmp = tmp_path_factory.mktemp("flux")
    torch.manual_seed(1)
    tokenizer = clip_tokenizer(tmp / "tokenizer_source")
    pieces = [
        ("<pad>", 0.0),
        ("</s>", 0.0),
        ("<unk>", 0.0),
        ("▁", -2.0),
        *((c, -5.0) for c in string.ascii_lowercase),
    ]
    tokenizer_2 = transformers.T5TokenizerFast(vocab=pieces, extra_ids=0)
    text_encoder_2 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=len(tokenizer_2),
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            feed_forward_proj="gated-gelu",
        )
    )
    transformer = diffusers.FluxTransformer2DModel(
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    pipe = FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(tmp / "flux-tiny")
    return tmp / "flux-tiny"


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

    monkeypatch.setattr(convert, "read_weights", refuse)
    monkeypatch.setattr(convert, "read_safetensors", refuse)


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
    code = convert_cli.main(list(args))
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
