"""The FLUX pipeline: CLIP (pooled) + T5 (tokens) -> FLUX transformer on packed 2x2 latent patches
(flow-matching SDE) -> VAE decode.

From a diffusers folder (``transformer/``, ``text_encoder/`` CLIP-L, ``text_encoder_2/`` T5, ``tokenizer/``,
``tokenizer_2/``, ``vae/``, ``scheduler/``), or, without a checkpoint, a randomly initialised FLUX transformer
in pixel space (2x2 pixel patches as tokens, no VAE) whose text features are one tiny CLIP text encoder's
token states and pooled output, with a word-level tokenizer: the CPU testbeds' configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.config import Config
from slas_jax.grpo import Pipeline
from slas_jax.models import clip, flux, t5, vae
from slas_jax.pipelines import PipelineBundle
from slas_jax.pipelines.sd import check_checkpoint_folder
from slas_jax.samplers import FlowSampler, shifted_sigmas
from slas_jax.samplers.flow import dynamic_shift_mu
from slas_jax.tokenizers import WordTokenizer, load_hf_tokenizer

REQUIRED_FILES = (
    "model_index.json",
    "transformer/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "vae/config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/tokenizer_config.json",
    "scheduler/scheduler_config.json",
)
PUBLISHED = "e.g. black-forest-labs/FLUX.1-dev on the Hugging Face Hub (download it on a machine with access)"
T5_MAX_LENGTH = 512


def flow_sampler(
    config: Config, image_seq_len: int, scheduler_config: dict[str, Any] | None = None
) -> FlowSampler:
    """A FlowSampler over ``config.sampler.num_steps`` sigmas: shifted by ``sampler.shift``, or with FLUX's
    dynamic shift for ``image_seq_len`` packed tokens read from ``scheduler_config``."""
    sc = config.sampler
    if sc.schedule == "dynamic":
        s = scheduler_config or {}
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
    return FlowSampler(
        sigmas=sigmas, noise_level=sc.noise_level, form="flow_grpo" if sc.name == "flow_sde" else "dance"
    )


def _assemble(
    config: Config,
    transformer: flux.FluxTransformer2DModel,
    frozen: dict[str, Any],
    encode,
    vae_model: vae.AutoencoderKL | None,
    tokenize,
    scheduler_config: dict[str, Any] | None,
) -> PipelineBundle:
    graph, params = nnx.split(transformer)
    resolution = config.model.resolution
    channels = transformer.config.in_channels // 4
    if vae_model is None:
        side = resolution
    else:
        vae_graph, frozen["vae"] = nnx.split(vae_model)
        side = resolution // vae_model.config.downscale
    latent_shape = (side, side, channels)
    img_ids = flux.image_ids(side // 2, side // 2)
    guidance = config.sampler.flux_guidance if transformer.config.guidance_embeds else None

    def denoise(params, x, t, cond):
        model = nnx.merge(graph, params)
        tokens, pooled = cond
        g = None if guidance is None else jnp.full((x.shape[0],), guidance, jnp.float32)
        v = model(flux.pack_latents(x), tokens, pooled, t, img_ids, flux.text_ids(tokens.shape[1]), g)
        return flux.unpack_latents(v, side, side)

    def decode(frozen, latents):
        images = (
            latents if vae_model is None else nnx.merge(vae_graph, frozen["vae"]).image_from_latents(latents)
        )
        return jnp.clip((images.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)

    sampler = flow_sampler(config, (side // 2) ** 2, scheduler_config)
    pipeline = Pipeline(
        denoise=denoise, encode=encode, decode=decode, sampler=sampler, latent_shape=latent_shape
    )
    return PipelineBundle(pipeline=pipeline, params=params, frozen=frozen, tokenize=tokenize)


def random_flux_pipeline(config: Config, vocabulary: Sequence[str], max_length: int) -> PipelineBundle:
    """A randomly initialised pixel-space FLUX transformer + one CLIP text encoder from ``config.model``
    (``architecture`` overrides FluxConfig fields, ``text_architecture`` CLIPTextConfig fields)."""
    tokenizer = WordTokenizer(vocabulary, max_length)
    dtype = jnp.dtype(config.model.dtype)
    rngs = nnx.Rngs(config.model.seed)
    text_config = clip.CLIPTextConfig(
        **{
            "vocab_size": tokenizer.vocab_size,
            "max_position_embeddings": max_length,
            "eos_token_id": WordTokenizer.EOS,
            "dtype": dtype,
            **config.model.text_architecture,
        }
    )
    flux_config = flux.FluxConfig(
        **{
            "in_channels": 12,
            "joint_attention_dim": text_config.hidden_size,
            "pooled_projection_dim": text_config.hidden_size,
            "dtype": dtype,
            "remat": config.model.remat,
            **config.model.architecture,
        }
    )
    text_graph, text_params = nnx.split(clip.CLIPTextModel(text_config, rngs=rngs))
    transformer = flux.FluxTransformer2DModel(flux_config, rngs=rngs)
    frozen: dict[str, Any] = {
        "text": text_params,
        "uncond_tokens": jnp.asarray(tokenizer([config.sampler.negative_prompt])),
    }

    def encode(frozen, batch):
        text = nnx.merge(text_graph, frozen["text"])
        out, neg = text(batch["tokens"]), text(frozen["uncond_tokens"])
        return (out.last_hidden_state, out.pooler_output), (neg.last_hidden_state, neg.pooler_output)

    return _assemble(config, transformer, frozen, encode, None, tokenizer, None)


def load_flux_pipeline(config: Config) -> PipelineBundle:
    """The pipeline of the diffusers FLUX folder ``config.model.checkpoint``; the batch's ``tokens`` are the
    CLIP ids followed by the T5 ids (77 + 512 columns)."""
    folder = check_checkpoint_folder(config.model.checkpoint, REQUIRED_FILES, "FLUX", PUBLISHED)
    dtype = jnp.dtype(config.model.dtype)
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    transformer = flux.load_flux_transformer(folder / "transformer", dtype=dtype, remat=config.model.remat)
    clip_model = clip.load_clip_text(folder / "text_encoder", dtype=dtype)
    t5_model = t5.load_t5_encoder(folder / "text_encoder_2", dtype=dtype)
    vae_model = vae.load_vae(folder / "vae", dtype=dtype)
    clip_length = clip_model.config.max_position_embeddings
    clip_tokenize = load_hf_tokenizer(folder / "tokenizer", kind="clip", max_length=clip_length)
    t5_tokenize = load_hf_tokenizer(folder / "tokenizer_2", kind="t5", max_length=T5_MAX_LENGTH)

    def tokenize(prompts: Sequence[str]) -> np.ndarray:
        return np.concatenate([clip_tokenize(prompts), t5_tokenize(prompts)], axis=1)

    clip_graph, clip_params = nnx.split(clip_model)
    t5_graph, t5_params = nnx.split(t5_model)
    frozen: dict[str, Any] = {
        "clip": clip_params,
        "t5": t5_params,
        "uncond_tokens": jnp.asarray(tokenize([config.sampler.negative_prompt])),
    }

    def features(frozen, tokens):
        pooled = nnx.merge(clip_graph, frozen["clip"])(tokens[:, :clip_length]).pooler_output
        return nnx.merge(t5_graph, frozen["t5"])(tokens[:, clip_length:]), pooled

    def encode(frozen, batch):
        return features(frozen, batch["tokens"]), features(frozen, frozen["uncond_tokens"])

    return _assemble(config, transformer, frozen, encode, vae_model, tokenize, scheduler_config)


def build_flux_pipeline(
    config: Config, *, vocabulary: Sequence[str] = (), max_length: int = 16
) -> PipelineBundle:
    """From ``config.model.checkpoint`` when set, else a random pixel-space model over ``vocabulary``."""
    if config.model.checkpoint:
        return load_flux_pipeline(config)
    return random_flux_pipeline(config, vocabulary, max_length)
