"""Sampling images of prompt lists with a run's sampler, in fixed-size chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.config import Config
from slas_jax.grpo import make_generate
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
