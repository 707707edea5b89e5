"""The shapes testbed's learned proxy reward ("proxy"): the role HPS / PickScore play for real models.

A tiny CLIP (``slas_jax.models.clip.CLIPModel``: a ViT image tower on 4x4-pixel patches, optionally behind
a convolutional stem, and a text tower over the shapes grammar's word tokenizer) scores an (image, prompt)
pair as

    score = exp(logit_scale) * cosine(image embedding, text embedding) + bias,

HPS's form (a scaled CLIP cosine) plus a bias, regressed onto the ground-truth PARTIAL score of a limited
labelled sample (``python -m slas_jax.testbed.train_proxy --config configs/shapes_proxy.py``), including how
it orders the samples of one prompt, and averaged over every alignment of the image with the ViT's patch grid
(:class:`ProxyModel`). Like HPS it is imperfect (trained on a few thousand base-model samples, it has never
seen most images a policy will produce) and exploitable: a policy can raise the cosine without satisfying the
prompt. The shipped checkpoint lives in ``checkpoints/shapes_proxy`` (``params/`` + ``metadata.json`` with its
held-out correlations with the truth).

The reward is a pure jittable function of (its parameters, images, the batch's ``proxy_tokens``); its
``prepare`` tokenises prompts with its own tokenizer, so any pipeline's tokenizer can sit beside it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.models import clip, layers
from slas_jax.rewards.registry import Reward, register
from slas_jax.tokenizers import WordTokenizer
from slas_jax.weights import read_metadata, restore_groups

DEFAULT_CHECKPOINT = "checkpoints/shapes_proxy"
REGENERATE = "python -m slas_jax.testbed.train_proxy --config configs/shapes_proxy.py"
TOKENS_KEY = "proxy_tokens"


def shift_images(images: jax.Array, offsets: jax.Array, phases: int) -> jax.Array:
    """images: (b, h, w, c); offsets: (b, 2) int32 in [0, phases). Each image translated by its offset minus
    phases // 2 pixels (down, right), edge pixels repeated into the uncovered border. Returns (b, h, w, c)."""
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (phases, phases), (phases, phases), (0, 0)), mode="edge")
    start = phases + phases // 2 - offsets

    def crop(image: jax.Array, corner: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, start)


class ProxyModel(nnx.Module):
    """exp(logit_scale) * cosine(image, text) + bias over a :class:`~slas_jax.models.clip.CLIPModel`.

    ``phases`` (the ViT's patch size, or 1) is how many pixel offsets per axis the image is seen at: training
    shows each image at one random offset, scoring averages over all ``phases ** 2``, so the score does not
    depend on where the patch grid falls. That does not stop the hack RL finds against this proxy, a dot
    texture repeating with the patch grid: such a texture looks the same at every offset. What the random
    offset in training does is generalise (docs/testbed.md).

    ``stem`` (channel widths, may be empty) puts 3x3 convolutions with GELU at full resolution in front of
    the ViT's patch embedding (a hybrid ViT), so that each patch token sees edges and corners rather than
    16 raw pixels.
    """

    def __init__(
        self,
        text: clip.CLIPTextConfig,
        vision: clip.CLIPVisionConfig,
        *,
        phases: int = 1,
        stem: Sequence[int] = (),
        rngs: nnx.Rngs,
    ):
        widths = (3, *stem)
        self.stem = nnx.List([layers.conv(a, b, 3, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.clip = clip.CLIPModel(text, dataclasses.replace(vision, num_channels=widths[-1]), rngs=rngs)
        self.phases = phases
        # The target is a score in [0, 1], not a contrastive logit: start from scale 1 and bias 0.5 rather
        # than CLIP's temperature of 1 / 0.07.
        self.clip.logit_scale[...] = 0.0
        self.bias = layers.param((), (), rngs=rngs, init=nnx.initializers.constant(0.5))

    def view(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """One view's score: images (b, h, w, 3) float in [0, 1]; tokens (b, length) int32. (b,) float32."""
        pixels = images.astype(jnp.float32) * 2.0 - 1.0
        for conv in self.stem:
            pixels = jax.nn.gelu(conv(pixels))
        image = self.clip.get_image_features(pixels)
        text = self.clip.get_text_features(tokens)
        image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
        text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
        cosine = jnp.sum(image * text, axis=-1)
        return jnp.exp(self.clip.logit_scale[...]) * cosine + self.bias[...]

    def __call__(self, images: jax.Array, tokens: jax.Array, offsets: jax.Array | None = None) -> jax.Array:
        """images: (b, h, w, 3) float in [0, 1]; tokens: (b, length) int32 word ids; offsets: (b, 2) int32 in
        [0, phases), one view per image (training), or None for the mean over all views. (b,) float32."""
        if offsets is not None:
            return self.view(shift_images(images, offsets, self.phases), tokens)
        if self.phases == 1:
            return self.view(images, tokens)
        b = images.shape[0]
        grid = jnp.stack(jnp.meshgrid(jnp.arange(self.phases), jnp.arange(self.phases)), -1).reshape(-1, 2)
        views = grid.shape[0]
        shifted = shift_images(jnp.repeat(images, views, axis=0), jnp.tile(grid, (b, 1)), self.phases)
        scores = self.view(shifted, jnp.repeat(tokens, views, axis=0))
        return scores.reshape(b, views).mean(axis=1)


def model_configs(
    architecture: Mapping[str, Any], tokenizer: WordTokenizer, image_size: int
) -> tuple[clip.CLIPTextConfig, clip.CLIPVisionConfig]:
    """The towers' configs: ``architecture`` {"text": CLIPTextConfig fields, "vision": CLIPVisionConfig
    fields, "projection_dim": int, optionally "phases": int and "stem": widths (:class:`ProxyModel`)}; the
    tokenizer fixes vocabulary, length and eos, ``image_size`` the vision input."""
    projection = architecture["projection_dim"]
    text = clip.CLIPTextConfig(
        **{
            "vocab_size": tokenizer.vocab_size,
            "max_position_embeddings": tokenizer.max_length,
            "eos_token_id": WordTokenizer.EOS,
            "with_projection": True,
            "projection_dim": projection,
            **architecture["text"],
        }
    )
    vision = clip.CLIPVisionConfig(
        **{"image_size": image_size, "projection_dim": projection, **architecture["vision"]}
    )
    return text, vision


def build_proxy(
    architecture: Mapping[str, Any], vocabulary: Sequence[str], max_length: int, image_size: int, seed: int
) -> tuple[nnx.GraphDef, nnx.State, WordTokenizer]:
    """A randomly initialised proxy: (graph, params, tokenizer)."""
    tokenizer = WordTokenizer(vocabulary, max_length)
    text, vision = model_configs(architecture, tokenizer, image_size)
    model = ProxyModel(
        text,
        vision,
        phases=architecture.get("phases", 1),
        stem=architecture.get("stem", ()),
        rngs=nnx.Rngs(seed),
    )
    graph, params = nnx.split(model)
    return graph, params, tokenizer


def load_proxy(folder: str | Path = DEFAULT_CHECKPOINT) -> tuple[nnx.GraphDef, nnx.State, WordTokenizer]:
    """The trained proxy in ``folder``: (graph, params, tokenizer). FileNotFoundError / ConversionError
    (one line, naming the command that regenerates it) when it is missing or does not fit."""
    metadata = read_metadata(folder, REGENERATE)
    graph, params, tokenizer = build_proxy(
        metadata["architecture"],
        metadata["vocabulary"],
        metadata["max_length"],
        metadata["image_size"],
        metadata["model_seed"],
    )
    restored = restore_groups(folder, {"proxy": params}, REGENERATE)["proxy"]
    return graph, jax.tree.map(jnp.asarray, restored), tokenizer


def proxy_scores(
    graph: nnx.GraphDef,
    params: nnx.State,
    images: jax.Array,
    tokens: jax.Array,
    offsets: jax.Array | None = None,
) -> jax.Array:
    """images: (b, h, w, 3) float in [0, 1]; tokens: (b, length) int32; offsets: (b, 2) int32 views for
    training, or None to average all views (:class:`ProxyModel`). Returns (b,) float32 scores."""
    return nnx.merge(graph, params)(images, tokens, offsets)


@register("proxy")
def proxy_reward(checkpoint: str = DEFAULT_CHECKPOINT) -> Reward:
    """The learned proxy in ``checkpoint``; ``prepare`` adds ``proxy_tokens`` (b, length) int32 to the batch."""
    graph, params, tokenizer = load_proxy(checkpoint)

    def fn(params: nnx.State, images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return proxy_scores(graph, params, images, batch[TOKENS_KEY])

    def prepare(prompts: Sequence[str]) -> dict[str, np.ndarray]:
        return {TOKENS_KEY: tokenizer(prompts)}

    return Reward(fn=fn, params=params, prepare=prepare)
