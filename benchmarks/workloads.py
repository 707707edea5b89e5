"""The benchmarked models and the work each step does, as one slas-jax ``Config`` per model, and the plain-data
spec both sides are built from (the PyTorch worker never imports slas-jax or JAX).

Models (pixel space 32x32x3, no VAE; text features from a small random CLIP text encoder, the same
architecture on both sides):

- ``unet``: an SD-style UNet2DConditionModel, block channels 64/128/256, CrossAttn/CrossAttn/Down blocks,
  one resnet per block (12.6M parameters; SD's two per block would be 17.8M), cross-attention 128, 8 heads;
  DDIM eta 1, 10 steps, every transition trained.
- ``flux``: a FluxTransformer2DModel, 4 double + 8 single blocks, 4 heads of 64 (width 256), 2x2 pixel
  patches as tokens; DanceGRPO's FLUX SDE step (eta 0.3, shift 3), 10 steps, every transition trained.
- ``shapes_unet`` / ``shapes_flow``: the testbed's base models (checkpoints/shapes_unet, shapes_flow) with the
  RL settings of ``configs/shapes_cpu.py:unet`` / its default (batch, micro-batches, KL, SDE window,
  trained steps and parameters as the demo runs them).

Every model is scored by the benchmark's own reward, mean image brightness (cheap, the same on both sides),
in place of a config's reward.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path
from typing import Any

import ml_collections

from slas_jax.config import Config, defaults, json_ready, load_config
from slas_jax.pipelines.architectures import flux_config, text_encoder_config, unet_config
from slas_jax.tokenizers import WordTokenizer

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("unet", "flux", "shapes_unet", "shapes_flow")
WORDS = ("a", "photo", "of", "red", "cat", "on", "the", "mat")
PROMPT = "a photo of a red cat on the mat"
TOKENS = 16
"""Word-tokenizer length of the random models' prompts (the testbed models use their checkpoint's)."""
TEXT = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
"""The random models' CLIP text encoder: width 128 (the UNet's cross-attention dim)."""


def _issue_config(family: str) -> ml_collections.ConfigDict:
    """Issue 22's setting: one prompt x group 8, 10 steps, every transition trained in one micro-batch, one
    AdamW update, no KL, DanceGRPO's clip range and learning rate."""
    c = defaults()
    c.model.family = family
    c.model.resolution = 32
    c.model.text_architecture = dict(TEXT)
    c.sampler.num_steps = 10
    c.advantage.method = "dance_grpo"
    c.loss.clip_range = 1e-4
    c.loss.timestep_fraction = 1.0
    c.optim.learning_rate = 1e-5
    c.train.prompts_per_step = 1
    c.train.group_size = 8
    c.train.micro_batch_size = 8
    c.train.grad_accum_steps = 1
    return c


def _unet() -> ml_collections.ConfigDict:
    c = _issue_config("unet")
    c.model.architecture = {
        "block_out_channels": (64, 128, 256),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "num_attention_heads": 8,
    }
    c.sampler.name = "ddim"
    c.sampler.noise_level = 1.0
    return c


def _flux() -> ml_collections.ConfigDict:
    c = _issue_config("flux")
    c.model.architecture = {
        "num_layers": 4,
        "num_single_layers": 8,
        "attention_head_dim": 64,
        "num_attention_heads": 4,
        "axes_dims_rope": (8, 28, 28),
    }
    c.sampler.name = "dance_flow"
    c.sampler.noise_level = 0.3
    c.sampler.shift = 3.0
    return c


def _shapes(variant: str) -> ml_collections.ConfigDict:
    return runpy.run_path(str(ROOT / "configs/shapes_cpu.py"))["get_config"](variant)


BUILDERS = {
    "unet": _unet,
    "flux": _flux,
    "shapes_unet": lambda: _shapes("unet"),
    "shapes_flow": lambda: _shapes(""),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmarked model and step.

    config: the slas-jax run config (checkpoint paths absolute); vocabulary: the word tokenizer's words;
    tokens (P, length) int32 as nested lists: the step's prompts, all the same prompt; the derived sizes:
    batch B = P x G, micro-batches of M, K trained timesteps per sample, B / M x K trained (micro-batch,
    timestep) slices, B / (M x A) optimizer updates.
    """

    name: str
    config: Config
    vocabulary: tuple[str, ...]
    tokens: list[list[int]]

    @property
    def batch(self) -> int:
        return self.config.train.prompts_per_step * self.config.train.group_size

    @property
    def trained_timesteps(self) -> int:
        loss, steps = self.config.loss, self.config.sampler.num_steps
        return max(
            1, round(loss.timestep_fraction * (steps - loss.exclude_first_steps - loss.exclude_last_steps))
        )

    @property
    def slices(self) -> int:
        return self.batch // self.config.train.micro_batch_size * self.trained_timesteps

    @property
    def updates(self) -> int:
        return self.batch // (self.config.train.micro_batch_size * self.config.train.grad_accum_steps)


def build_workload(
    name: str,
    *,
    prompts: int | None = None,
    group: int | None = None,
    steps: int | None = None,
    micro: int | None = None,
) -> Workload:
    """The workload of model ``name`` (one of MODELS); the keywords override the step's size (for quick runs):
    prompts per step, group size, sampler steps, micro-batch size (one optimizer update over the batch
    when set)."""
    c = BUILDERS[name]()
    init = c.model.get("init_checkpoint")
    if init:
        c.model.init_checkpoint = str(ROOT / init)
    for value, section, key in (
        (prompts, "train", "prompts_per_step"),
        (group, "train", "group_size"),
        (steps, "sampler", "num_steps"),
        (micro, "train", "micro_batch_size"),
    ):
        if value is not None:
            c[section][key] = value
    if micro is not None:
        c.train.grad_accum_steps = c.train.prompts_per_step * c.train.group_size // micro
    config = load_config(c)
    if init:
        metadata = json.loads((Path(c.model.init_checkpoint) / "metadata.json").read_text())
        vocabulary = tuple(metadata["vocabulary"])
        prompt = " ".join(vocabulary[:3])
    else:
        vocabulary, prompt = WORDS, PROMPT
    tokenizer = WordTokenizer(vocabulary, TOKENS)
    tokens = tokenizer([prompt] * config.train.prompts_per_step).tolist()
    return Workload(name, config, vocabulary, tokens)


def torch_spec(workload: Workload) -> dict[str, Any]:
    """The plain-data description of the workload the PyTorch side builds from: the diffusers backbone's and
    transformers CLIP text encoder's constructor arguments (the same architectures as slas-jax's), the prompt
    and empty-prompt tokens, and the config's sections as JSON-ready dicts."""
    config = workload.config
    tokenizer = WordTokenizer(workload.vocabulary, TOKENS)
    text = text_encoder_config(config.model, tokenizer)
    if config.model.family == "unet":
        ours = unet_config(config.model, text)
        backbone = {
            f.name: getattr(ours, f.name)
            for f in dataclasses.fields(ours)
            if f.name not in ("num_attention_heads", "prediction_type", "dtype", "remat")
        }
        # diffusers keeps the head count under its historical name (see UNetConfig.num_attention_heads).
        backbone["attention_head_dim"] = ours.num_attention_heads
    else:
        ours = flux_config(config.model, text)
        backbone = {
            f.name: getattr(ours, f.name)
            for f in dataclasses.fields(ours)
            if f.name not in ("dtype", "remat")
        }
    text_kwargs = {
        f.name: getattr(text, f.name)
        for f in dataclasses.fields(text)
        if f.name not in ("dtype", "remat", "with_projection", "projection_dim")
    }
    return {
        "name": workload.name,
        "family": config.model.family,
        "init_checkpoint": config.model.init_checkpoint,
        "backbone": json_ready(backbone),
        "text": text_kwargs,
        "tokens": workload.tokens,
        "uncond_tokens": tokenizer([config.sampler.negative_prompt]).tolist(),
        "trained_timesteps": workload.trained_timesteps,
        "slices": workload.slices,
        **config_sections(config),
    }


def config_sections(config: Config) -> dict[str, dict[str, Any]]:
    """The config as a JSON-ready mapping of sections, which ``load_config`` reads back."""
    return json_ready(config)


def jax_spec(workload: Workload) -> dict[str, Any]:
    """What the slas-jax worker builds from: the config (:func:`config_sections`), the vocabulary and the
    prompt tokens."""
    return {
        "name": workload.name,
        "config": config_sections(workload.config),
        "vocabulary": list(workload.vocabulary),
        "tokens": workload.tokens,
        "slices": workload.slices,
    }
