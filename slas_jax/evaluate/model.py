"""The model a benchmark samples: a base model from the config (``model.*``: a testbed weights folder via
``model.init_checkpoint``, a diffusers folder via ``model.checkpoint``), an exported policy
(``weights.load_policy``) or the latest train-state checkpoint of a run folder (``slas_jax.checkpoint``).

Sampling settings (``sampler.*``) always come from the config, so a base model and the policies trained from
it are sampled the same way; a policy contributes its ``model`` section and weights only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slas_jax.checkpoint import Checkpointer
from slas_jax.config import Config, ConfigError, from_mapping, json_ready, load_config
from slas_jax.data import build_prompt_source
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.weights import read_metadata, restore_pretrained


@dataclass(frozen=True)
class EvalModel:
    """config: the run config the images are sampled with (its ``model`` section is the model's);
    bundle: the pipeline, its ``params`` the backbone sampled; source: where the weights come from, as the
    manifest records it (``{"kind": "base" | "policy" | "run", "path": ..., ...}``)."""

    config: Config
    bundle: PipelineBundle
    source: dict[str, Any]


def vocabulary(config: Config) -> tuple[str, ...]:
    """The words of a word-level tokenizer (a model without ``model.checkpoint``): the ones its weights
    folder records, else those of the training prompt source (``data.*``), as ``train`` builds it."""
    if config.model.checkpoint is not None:
        return ()
    if config.model.init_checkpoint:
        recorded = read_metadata(config.model.init_checkpoint).get("vocabulary")
        if recorded:
            return tuple(recorded)
    return tuple(build_prompt_source(config.data).vocabulary)


@functools.lru_cache(maxsize=1)
def _initial_pipeline(sections: str, words: tuple[str, ...]) -> PipelineBundle:
    # Validated as part of the whole config already; the other sections stay at their defaults here.
    return build_pipeline(from_mapping(Config, json.loads(sections)), words)


def pipeline(config: Config, words: tuple[str, ...]) -> PipelineBundle:
    """``build_pipeline(config, words)``, keeping the model as built before ``model.init_checkpoint``'s
    weights for the next call in this process (a notebook's or the tests' repeated commands): the same
    pipeline object lets the driver reuse its compiled sampler, and the random initialisation is not redone.
    A pipeline depends on the ``model`` and ``sampler`` sections only."""
    model = dataclasses.replace(config.model, init_checkpoint=None)
    sections = json.dumps({"model": json_ready(model), "sampler": json_ready(config.sampler)}, sort_keys=True)
    bundle = _initial_pipeline(sections, words)
    if config.model.init_checkpoint:
        bundle = restore_pretrained(bundle, config.model.init_checkpoint)
    return bundle


def load_model(config: Config, *, policy: str | None = None, run_dir: str | None = None) -> EvalModel:
    """The model to sample: ``policy`` (a weights folder), ``run_dir`` (a run folder whose ``checkpoints/``
    holds train-state checkpoints, built from ``config``'s model) or, with neither, ``config``'s model."""
    if policy and run_dir:
        raise ConfigError("--policy and --run_dir both name the weights; pass one of them")
    if policy:
        recorded = read_metadata(policy)
        # As weights.load_policy: the folder's model section with its weights over it.
        # The whole config validated again: its sampler must suit the policy's model family.
        model = {**recorded["model"], "init_checkpoint": str(policy)}
        config = load_config({**json_ready(config), "model": model})
        source = {
            "kind": recorded.get("kind", "weights"),
            "path": str(Path(policy).absolute()),
            "rl": recorded.get("rl"),
            "params_sha256": recorded.get("params_sha256"),
        }
        return EvalModel(config, pipeline(config, tuple(recorded.get("vocabulary", ()))), source)
    bundle = pipeline(config, vocabulary(config))
    base = {"checkpoint": config.model.checkpoint, "init_checkpoint": config.model.init_checkpoint}
    if not run_dir:
        return EvalModel(config, bundle, {"kind": "base", **base})
    checkpoints = Path(run_dir) / "checkpoints"
    if not checkpoints.is_dir():
        raise FileNotFoundError(
            f"run folder {run_dir} has no checkpoints/; a run writes them with --config.train.checkpoint_every=N"
        )
    checkpointer = Checkpointer(checkpoints)
    try:
        step, params = checkpointer.restore_params(bundle.params)
    finally:
        checkpointer.close()
    source = {"kind": "run", "path": str(checkpoints.absolute()), "step": step, **base}
    return EvalModel(config, dataclasses.replace(bundle, params=params), source)
