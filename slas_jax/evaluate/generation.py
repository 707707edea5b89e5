"""Sampling images of prompt lists with a run's sampler: in fixed-size chunks (``generate_images``) or one
image per key (``make_image_sampler``), so that an image depends on its own key and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.config import Config, SamplerConfig
from slas_jax.grpo import Pipeline, make_generate, rollout
from slas_jax.pipelines import PipelineBundle


def generate_images(
    bundle: PipelineBundle,
    config: Config,
    params: Any,
    frozen: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int,
    seed: int,
    chunk: int,
) -> np.ndarray:
    """Images of ``prompts`` sampled with the run's sampler (``grpo.make_generate``: its steps, noise and
    CFG), ``samples_per_prompt`` each, ``chunk`` prompts per call (the last chunk padded by repeating its
    first prompt, so one compilation serves every call); chunk c uses key fold_in(PRNGKey(seed), c).

    Returns (len(prompts) * samples_per_prompt, h, w, 3) float32 in [0, 1], sample j of prompt i at
    i * samples_per_prompt + j.
    """
    generate = make_generate(bundle.pipeline, config)
    tokens = bundle.tokenize(list(prompts))
    out = []
    for c, start in enumerate(range(0, len(prompts), chunk)):
        part = tokens[start : start + chunk]
        padded = np.concatenate([part, np.repeat(part[:1], chunk - len(part), axis=0)])
        images = generate(
            params,
            frozen,
            {"tokens": jnp.asarray(padded)},
            jax.random.fold_in(jax.random.PRNGKey(seed), c),
            samples_per_prompt=samples_per_prompt,
        )
        out.append(np.asarray(images)[: len(part) * samples_per_prompt])
    return np.concatenate(out)


def make_image_sampler(pipeline: Pipeline, sampler: SamplerConfig) -> Callable[..., jax.Array]:
    """A jitted ``(params, frozen, tokens (B, L) int32, keys (B, 2) uint32) -> images (B, h, w, 3) float32
    in [0, 1]``: image b is the sampler's rollout (steps, noise, CFG, decode; ``grpo.rollout`` with one sample
    per prompt) on prompt row b with all its noise drawn from ``keys[b]``.

    Each image is its own rollout under ``jax.vmap``, so it does not depend on the other rows of the batch it
    was drawn in: a benchmark can regenerate any single image (exactly, in a batch of the same shape; other
    shapes compile to other code, whose float rounding may differ in the last bits). Shardings follow the
    arguments (e.g. the rows split over the mesh's batch axes, parameters on theirs).
    """

    def one_image(params: Any, frozen: Any, tokens: jax.Array, key: jax.Array) -> jax.Array:
        *_, images = rollout(
            pipeline,
            params,
            frozen,
            {"tokens": tokens[None]},
            key,
            group_size=1,
            guidance_scale=sampler.guidance_scale,
            same_noise_in_group=False,
            decode=sampler.decode,
        )
        return images[0]

    return jax.jit(jax.vmap(one_image, in_axes=(None, None, 0, 0)))
