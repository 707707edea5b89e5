"""The Stable Diffusion 1.x / 2.x pipeline: CLIP text encoder -> UNet (``sampler.name``, CFG) -> VAE decode.

From a diffusers folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``,
``model_index.json``) or one converted from it by ``python -m slas_jax.convert``, or, without a checkpoint,
randomly initialised UNet and CLIP text encoder of the same classes working in pixel space (no VAE) with a
word-level tokenizer: the CPU testbeds' configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from slas_jax import lora
from slas_jax.config import Config
from slas_jax.grpo import Pipeline
from slas_jax.models import clip, unet, vae
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import PipelineBundle
from slas_jax.pipelines.architectures import unet_config
from slas_jax.pipelines.common import (
    CONFIG_FILES,
    check_checkpoint_folder,
    negative_tokens,
    placeholder_tokenizer,
    random_text_encoder,
    to_unit_range,
)
from slas_jax.pipelines.components import Place, load_components
from slas_jax.samplers import (
    SAMPLERS,
    DiffusionSchedule,
    Sampler,
    ddim_timesteps,
    scaled_linear_alphas_cumprod,
)
from slas_jax.tokenizers import Tokenize, load_hf_tokenizer

REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json",
    "text_encoder/config.json",
    "vae/config.json",
    # Hub folders hold vocab.json + merges.txt, transformers 5's save_pretrained tokenizer.json; both have this.
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
)
COMPONENT_CONFIGS = (*CONFIG_FILES, "unet/config.json", "text_encoder/config.json", "vae/config.json")
"""What an abstract build reads (shapes only)."""
PUBLISHED = (
    "e.g. CompVis/stable-diffusion-v1-4 on the Hugging Face Hub (download it on a machine with access)"
)


# scheduler_config.json settings that change the DDIM arithmetic, with the values implemented (the ones SD1.x /
# SD2.x ship); anything else would silently sample a different chain, so it is refused.
_SCHEDULER_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "beta_schedule": ("scaled_linear", "linear"),
    "trained_betas": (None,),
    "clip_sample": (False,),
    "thresholding": (False,),
    "timestep_spacing": ("leading",),
    "rescale_betas_zero_snr": (False,),
    "prediction_type": ("epsilon", "v_prediction"),
}


def scheduler_sampler(scheduler_config: dict[str, Any], config: Config) -> Sampler:
    """The ``config.sampler.name`` sampler over the noise schedule of a diffusers scheduler_config.json dict,
    at ``config.sampler.num_steps`` steps; scheduler settings not implemented raise ConversionError."""
    for key, supported in _SCHEDULER_SUPPORTED.items():
        if key in scheduler_config and scheduler_config[key] not in supported:
            raise ConversionError(
                f"scheduler_config.json: {key}={scheduler_config[key]!r} is not supported (supported: "
                f"{', '.join(map(repr, supported))})"
            )
    num_train = scheduler_config.get("num_train_timesteps", 1000)
    alphas = scaled_linear_alphas_cumprod(
        num_train,
        scheduler_config.get("beta_start", 0.00085),
        scheduler_config.get("beta_end", 0.012),
        scheduler_config.get("beta_schedule", "scaled_linear"),
    )
    timesteps, prev = ddim_timesteps(
        config.sampler.num_steps, num_train, scheduler_config.get("steps_offset", 0)
    )
    schedule = DiffusionSchedule(
        alphas_cumprod=alphas,
        timesteps=timesteps,
        prev_timesteps=prev,
        final_alpha_cumprod=1.0 if scheduler_config.get("set_alpha_to_one", True) else float(alphas[0]),
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
    )
    return SAMPLERS.get(config.sampler.name).build(schedule, config.sampler)


def _assemble(
    config: Config,
    unet_model: unet.UNet2DConditionModel,
    text_model: clip.CLIPTextModel,
    vae_model: vae.AutoencoderKL | None,
    tokenize: Tokenize,
    sampler: Sampler,
) -> PipelineBundle:
    lora.attach(unet_model, config.model.lora)
    unet_graph, unet_params = nnx.split(unet_model)
    text_graph, text_params = nnx.split(text_model)
    frozen: dict[str, Any] = {
        "text": text_params,
        "uncond_tokens": negative_tokens(tokenize, config),
    }
    resolution = config.model.resolution
    if vae_model is None:
        latent_shape = (resolution, resolution, unet_model.config.in_channels)
    else:
        vae_graph, frozen["vae"] = nnx.split(vae_model)
        factor = vae_model.config.downscale
        latent_shape = (resolution // factor, resolution // factor, unet_model.config.in_channels)

    def denoise(params, x, t, cond):
        return nnx.merge(unet_graph, params)(x, t, cond)

    def encode(frozen, batch):
        text = nnx.merge(text_graph, frozen["text"])
        return text(batch["tokens"]).last_hidden_state, text(frozen["uncond_tokens"]).last_hidden_state

    def decode(frozen, latents):
        if vae_model is None:
            images = latents
        else:
            images = nnx.merge(vae_graph, frozen["vae"]).image_from_latents(latents)
        return to_unit_range(images)

    pipeline = Pipeline(
        denoise=denoise, encode=encode, decode=decode, sampler=sampler, latent_shape=latent_shape
    )
    return PipelineBundle(pipeline=pipeline, params=unet_params, frozen=frozen, tokenize=tokenize)


def random_sd_pipeline(config: Config, vocabulary: Sequence[str], max_length: int) -> PipelineBundle:
    """A randomly initialised pixel-space UNet + CLIP text encoder from ``config.model`` (``architecture`` sets
    UNetConfig fields, ``text_architecture`` CLIPTextConfig fields: slas_jax.pipelines.architectures), with a
    word-level tokenizer over ``vocabulary``."""
    rngs = nnx.Rngs(config.model.seed)
    tokenizer, text_model = random_text_encoder(config, vocabulary, max_length, rngs)
    unet_model = unet.UNet2DConditionModel(unet_config(config.model, text_model.config), rngs=rngs)
    sampler = scheduler_sampler(
        {"steps_offset": 1, "prediction_type": unet_model.config.prediction_type}, config
    )
    return _assemble(config, unet_model, text_model, None, tokenizer, sampler)


def load_sd_pipeline(config: Config, *, abstract: bool = False, place: Place | None = None) -> PipelineBundle:
    """The pipeline of ``config.model.checkpoint``: a diffusers folder, or one converted from it by
    ``python -m slas_jax.convert`` (restored without parsing safetensors). ``abstract``: its parameters are
    ShapeDtypeStructs built from the config.json files alone and its tokenizer gives zeros (planning);
    ``place``: the shardings its parameters are read onto (``components.load_component``)."""
    required = COMPONENT_CONFIGS if abstract else REQUIRED_FILES
    folder = check_checkpoint_folder(config.model.checkpoint, required, "Stable Diffusion", PUBLISHED)
    dtype = jnp.dtype(config.model.dtype)
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    unet_model, text_model, vae_model = load_components(
        folder,
        ("unet", "text_encoder", "vae"),
        dtype=dtype,
        remat=config.model.remat,
        abstract=abstract,
        place=place,
    )
    length = text_model.config.max_position_embeddings
    tokenize = (
        placeholder_tokenizer(length)
        if abstract
        else load_hf_tokenizer(folder / "tokenizer", kind="clip", max_length=length)
    )
    return _assemble(
        config, unet_model, text_model, vae_model, tokenize, scheduler_sampler(scheduler_config, config)
    )


def build_sd_pipeline(
    config: Config,
    *,
    vocabulary: Sequence[str] = (),
    max_length: int = 16,
    abstract: bool = False,
    place: Place | None = None,
) -> PipelineBundle:
    """From ``config.model.checkpoint`` when set (``abstract``: see :func:`load_sd_pipeline`), else a random
    pixel-space model over ``vocabulary``."""
    if config.model.checkpoint:
        return load_sd_pipeline(config, abstract=abstract, place=place)
    return random_sd_pipeline(config, vocabulary, max_length)
