"""The FLUX pipeline: CLIP (pooled) + T5 (tokens) -> FLUX transformer on packed 2x2 latent patches
(flow-matching SDE) -> VAE decode, as diffusers' ``FluxPipeline`` computes them (parity-tested stage by stage
in tests/pipelines/test_flux_pipeline.py).

From a diffusers folder (``transformer/``, ``text_encoder/`` CLIP-L, ``text_encoder_2/`` T5, ``tokenizer/``,
``tokenizer_2/``, ``vae/``, ``scheduler/``), or, without a checkpoint, a randomly initialised FLUX transformer
in pixel space (2x2 pixel patches as tokens, no VAE) whose text features are one tiny CLIP text encoder's
token states and pooled output, with a word-level tokenizer: the CPU testbeds' configuration.

The sampler works on unpacked NHWC latents (h/8, w/8, 16); ``denoise`` packs them into FluxPipeline's
(h/16 * w/16, 64) tokens for the transformer and unpacks the velocity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax import lora
from slas_jax.config import Config, ConfigError
from slas_jax.grpo import Pipeline
from slas_jax.models import conversion, flux, vae
from slas_jax.pipelines import PipelineBundle
from slas_jax.pipelines.architectures import flux_config
from slas_jax.pipelines.common import (
    CONFIG_FILES,
    check_checkpoint_folder,
    negative_tokens,
    placeholder_tokenizer,
    random_text_encoder,
    to_unit_range,
)
from slas_jax.pipelines.components import Place, load_components
from slas_jax.samplers import SAMPLERS, FlowSchedule, Sampler, shifted_sigmas
from slas_jax.samplers.flow import dynamic_shift_mu
from slas_jax.tokenizers import load_hf_tokenizer

REQUIRED_FILES = (
    "model_index.json",
    "transformer/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "vae/config.json",
    # tokenizer_config.json, not vocab.json: transformers 5 saves CLIPTokenizer as tokenizer.json only.
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer_config.json",
    "scheduler/scheduler_config.json",
)
COMPONENT_CONFIGS = (
    *CONFIG_FILES,
    "transformer/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "vae/config.json",
)
"""What an abstract build reads (shapes only)."""
PUBLISHED = (
    "e.g. black-forest-labs/FLUX.1-dev on the Hugging Face Hub (gated: accept its licence there, then download "
    "it on a machine with access)"
)
T5_MAX_LENGTH = 512
"""T5 tokens per prompt: FluxPipeline's default max_sequence_length (FLUX.1-dev; DanceGRPO uses it too)."""

# FlowMatchEulerDiscreteScheduler settings that change the sigmas FluxPipeline samples with, and the values
# "dynamic" implements; any other value would silently give a different schedule.
_DYNAMIC_SCHEDULER: dict[str, tuple[Any, ...]] = {
    "time_shift_type": ("exponential",),
    "shift_terminal": (None, 0, 0.0),
    "use_karras_sigmas": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_flow_sigmas": (False,),
    "invert_sigmas": (False,),
    "stochastic_sampling": (False,),
}


def flow_sampler(
    config: Config, image_seq_len: int, scheduler_config: dict[str, Any] | None = None
) -> Sampler:
    """The ``config.sampler.name`` sampler over ``config.sampler.num_steps`` sigmas: shifted by
    ``sampler.shift`` (SD3 / DanceGRPO), or "dynamic": FluxPipeline's schedule for ``image_seq_len`` packed
    tokens (linear sigmas, exponential shift by mu from the diffusers ``scheduler_config`` dict; None:
    FLUX.1-dev's values). A scheduler whose schedule "dynamic" does not reproduce raises ConfigError."""
    sc = config.sampler
    if sc.schedule == "dynamic":
        s = scheduler_config or {}
        _check_dynamic_scheduler(s)
        mu = dynamic_shift_mu(
            image_seq_len,
            base_seq_len=s.get("base_image_seq_len", 256),
            max_seq_len=s.get("max_image_seq_len", 4096),
            base_shift=s.get("base_shift", 0.5),
            max_shift=s.get("max_shift", 1.15),
        )
        sigmas = shifted_sigmas(sc.num_steps, mu=mu)
    else:
        sigmas = shifted_sigmas(sc.num_steps, sc.shift)
    return SAMPLERS.get(sc.name).build(FlowSchedule(sigmas=sigmas), sc)


def _check_dynamic_scheduler(scheduler_config: dict[str, Any]) -> None:
    if not scheduler_config.get("use_dynamic_shifting", True):
        shift = scheduler_config.get("shift", 1.0)
        raise ConfigError(
            f"config.sampler.schedule: 'dynamic' needs a scheduler with use_dynamic_shifting, this checkpoint's "
            f"uses a fixed shift of {shift}; set sampler.schedule='shift' and sampler.shift={shift}"
        )
    for key, supported in _DYNAMIC_SCHEDULER.items():
        if scheduler_config.get(key, supported[0]) not in supported:
            raise ConfigError(
                f"config.sampler.schedule: 'dynamic' does not implement the checkpoint scheduler's "
                f"{key}={scheduler_config[key]!r}; use sampler.schedule='shift'"
            )


def latent_side(config: Config, downscale: int) -> int:
    """Latent height = width for ``config.model.resolution`` pixels and a ``downscale``x VAE (1: pixel space);
    ConfigError unless the latents tile into 2x2 patches (FluxPipeline would silently round the size down)."""
    resolution = config.model.resolution
    if resolution % (2 * downscale):
        raise ConfigError(
            f"config.model.resolution: must be a multiple of {2 * downscale} for FLUX (2x2 patches of "
            f"{downscale}x-downsampled latents), got {resolution}"
        )
    return resolution // downscale


def _assemble(
    config: Config,
    transformer: flux.FluxTransformer2DModel,
    frozen: dict[str, Any],
    encode,
    vae_model: vae.AutoencoderKL | None,
    tokenize,
    scheduler_config: dict[str, Any] | None,
) -> PipelineBundle:
    lora.attach(transformer, config.model.lora)
    graph, params = nnx.split(transformer)
    channels = transformer.config.in_channels // 4
    side = latent_side(config, 1 if vae_model is None else vae_model.config.downscale)
    if vae_model is not None:
        vae_graph, frozen["vae"] = nnx.split(vae_model)
    latent_shape = (side, side, channels)
    img_ids = flux.image_ids(side // 2, side // 2)
    guidance = config.sampler.flux_guidance if transformer.config.guidance_embeds else None

    def denoise(params, x, t, cond):
        # x: (b, side, side, channels) latents; t: (b,) sigma; cond: text features (b, seq, joint dim) and
        # pooled text (b, pooled dim). Returns the velocity in x's layout, float32.
        model = nnx.merge(graph, params)
        features, pooled = cond
        g = None if guidance is None else jnp.full((x.shape[0],), guidance, jnp.float32)
        v = model(flux.pack_latents(x), features, pooled, t, img_ids, flux.text_ids(features.shape[1]), g)
        return flux.unpack_latents(v, side, side)

    def decode(frozen, latents):
        images = (
            latents if vae_model is None else nnx.merge(vae_graph, frozen["vae"]).image_from_latents(latents)
        )
        return to_unit_range(images)

    sampler = flow_sampler(config, (side // 2) ** 2, scheduler_config)
    pipeline = Pipeline(
        denoise=denoise, encode=encode, decode=decode, sampler=sampler, latent_shape=latent_shape
    )
    return PipelineBundle(pipeline=pipeline, params=params, frozen=frozen, tokenize=tokenize)


def random_flux_pipeline(config: Config, vocabulary: Sequence[str], max_length: int) -> PipelineBundle:
    """A randomly initialised pixel-space FLUX transformer + one CLIP text encoder from ``config.model``
    (``architecture`` sets FluxConfig fields, ``text_architecture`` CLIPTextConfig fields:
    slas_jax.pipelines.architectures), with a word-level tokenizer over ``vocabulary``."""
    rngs = nnx.Rngs(config.model.seed)
    tokenizer, text_model = random_text_encoder(config, vocabulary, max_length, rngs)
    transformer = flux.FluxTransformer2DModel(flux_config(config.model, text_model.config), rngs=rngs)
    text_graph, text_params = nnx.split(text_model)
    frozen: dict[str, Any] = {"text": text_params, "uncond_tokens": negative_tokens(tokenizer, config)}

    def encode(frozen, batch):
        text = nnx.merge(text_graph, frozen["text"])
        out, neg = text(batch["tokens"]), text(frozen["uncond_tokens"])
        return (out.last_hidden_state, out.pooler_output), (neg.last_hidden_state, neg.pooler_output)

    return _assemble(config, transformer, frozen, encode, None, tokenizer, None)


def load_flux_pipeline(
    config: Config, *, abstract: bool = False, place: Place | None = None
) -> PipelineBundle:
    """The pipeline of the diffusers FLUX folder ``config.model.checkpoint``; the batch's ``tokens`` are the
    CLIP ids followed by the T5 ids (77 + 512 columns). ``abstract``: its parameters are ShapeDtypeStructs
    built from the config.json files alone and its tokenizers give zeros (planning); ``place``: the
    shardings its parameters are read onto (``components.load_component``)."""
    required = COMPONENT_CONFIGS if abstract else REQUIRED_FILES
    folder = check_checkpoint_folder(config.model.checkpoint, required, "FLUX", PUBLISHED)
    dtype = jnp.dtype(config.model.dtype)
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    # Checked before the weights load (FLUX.1-dev's are tens of GB); _assemble uses the loaded VAE's config.
    latent_side(config, vae.VAEConfig.from_dict(conversion.read_config(folder / "vae")).downscale)
    transformer, clip_model, t5_model, vae_model = load_components(
        folder,
        ("transformer", "text_encoder", "text_encoder_2", "vae"),
        dtype=dtype,
        remat=config.model.remat,
        abstract=abstract,
        place=place,
    )
    clip_length = clip_model.config.max_position_embeddings
    if abstract:
        clip_tokenize, t5_tokenize = placeholder_tokenizer(clip_length), placeholder_tokenizer(T5_MAX_LENGTH)
    else:
        clip_tokenize = load_hf_tokenizer(folder / "tokenizer", kind="clip", max_length=clip_length)
        t5_tokenize = load_hf_tokenizer(folder / "tokenizer_2", kind="t5", max_length=T5_MAX_LENGTH)

    def tokenize(prompts: Sequence[str]) -> np.ndarray:
        return np.concatenate([clip_tokenize(prompts), t5_tokenize(prompts)], axis=1)

    clip_graph, clip_params = nnx.split(clip_model)
    t5_graph, t5_params = nnx.split(t5_model)
    frozen: dict[str, Any] = {
        "clip": clip_params,
        "t5": t5_params,
        "uncond_tokens": negative_tokens(tokenize, config),
    }

    def features(frozen, tokens):
        pooled = nnx.merge(clip_graph, frozen["clip"])(tokens[:, :clip_length]).pooler_output
        return nnx.merge(t5_graph, frozen["t5"])(tokens[:, clip_length:]), pooled

    def encode(frozen, batch):
        return features(frozen, batch["tokens"]), features(frozen, frozen["uncond_tokens"])

    return _assemble(config, transformer, frozen, encode, vae_model, tokenize, scheduler_config)


def build_flux_pipeline(
    config: Config,
    *,
    vocabulary: Sequence[str] = (),
    max_length: int = 16,
    abstract: bool = False,
    place: Place | None = None,
) -> PipelineBundle:
    """From ``config.model.checkpoint`` when set (``abstract``: see :func:`load_flux_pipeline`), else a random
    pixel-space model over ``vocabulary``."""
    if config.model.checkpoint:
        return load_flux_pipeline(config, abstract=abstract, place=place)
    return random_flux_pipeline(config, vocabulary, max_length)
