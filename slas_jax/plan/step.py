"""A run's GRPO step without its arrays: the abstract train state, shardings and batch of a config on a mesh,
and the step compiled ahead of time from them (nothing is allocated, no weights are read).

Models come from ``build_pipeline(..., abstract=True)`` (the checkpoint folder's config.json files; the
published ones of :mod:`slas_jax.plan.published` when the folder is not on this machine) or, for randomly
initialised models, from ``jax.eval_shape`` of their initialisation. The HPS-v2.1 reward is built abstractly
from its open_clip architecture; other JAX rewards are built as the run builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from slas_jax import grpo, placement
from slas_jax.cli import USER_ERRORS
from slas_jax.config import MIXED_REWARD, Config
from slas_jax.data import build_prompt_source
from slas_jax.errors import UserError
from slas_jax.models import conversion
from slas_jax.models.open_clip import make_clip_model
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.pipelines.common import placeholder_tokenizer
from slas_jax.plan import published
from slas_jax.rewards import Reward, build_reward
from slas_jax.rewards.hps import CONFIG_FILE, hps_scorer
from slas_jax.rewards.mix import build_mixed_reward


class PlanError(UserError):
    """A run the planner cannot plan, or a plan that does not fit; the message is one line."""


@dataclass(frozen=True)
class AbstractRun:
    """state / shardings: the train state as ShapeDtypeStructs and its NamedShardings; batch: the prompt
    batch's ShapeDtypeStructs (leading axis prompts_per_step); step: the un-jitted train step; notes: where
    the shapes came from, for the plan's header."""

    state: grpo.TrainState
    shardings: grpo.TrainState
    batch: dict[str, jax.ShapeDtypeStruct]
    step: Callable[..., Any]
    notes: tuple[str, ...]


def _abstract_bundle(
    config: Config, vocabulary: tuple[str, ...], workdir: Path
) -> tuple[PipelineBundle, str]:
    """The pipeline with abstract parameters, and a note on where its shapes came from."""
    if config.model.checkpoint is None:
        held: dict[str, PipelineBundle] = {}

        def build() -> tuple[Any, Any]:
            held["bundle"] = build_pipeline(config, vocabulary, abstract=True)
            return held["bundle"].params, held["bundle"].frozen

        params, frozen = jax.eval_shape(build)
        bundle = dataclasses.replace(held["bundle"], params=params, frozen=frozen)
        return bundle, "random model (model.architecture)"
    folder = Path(config.model.checkpoint).expanduser()
    note = f"config.json files of {folder}"
    if not (folder / "model_index.json").is_file():
        name = published.write_config_folder(config.model.family, workdir / "published")
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, checkpoint=str(workdir / "published"))
        )
        note = f"published {name} config.json files ({folder} is not on this machine)"
    return build_pipeline(config, vocabulary, abstract=True), note


def _abstract_hps(options: dict[str, Any]) -> tuple[Reward, str]:
    folder = Path(options.get("checkpoint") or "").expanduser()
    if (folder / CONFIG_FILE).is_file():
        model_cfg, note = (
            conversion.read_config(folder, CONFIG_FILE)["model_cfg"],
            f"architecture of {folder}",
        )
    else:
        model_cfg, note = published.HPS_V2_MODEL_CFG, "published ViT-H-14 architecture"
    dtype = jnp.dtype(options.get("dtype", "float32"))
    model = nnx.eval_shape(lambda: make_clip_model(model_cfg, dtype=dtype))
    length = model.text_config.max_position_embeddings
    return hps_scorer(model, placeholder_tokenizer(length), options.get("jpeg_quality")), f"hps_v2: {note}"


def _reward(config: Config) -> tuple[Reward, str]:
    rc = config.reward
    if rc.name == "hps_v2":
        return _abstract_hps(dict(rc.options))
    reward = build_mixed_reward(rc) if rc.name == MIXED_REWARD else build_reward(rc.name, rc.options)
    if reward.fn is None:
        raise PlanError(
            f"reward {rc.name!r} runs on the host, outside the compiled step; plan the run with a JAX reward "
            "of the same model instead (the host reward's own memory is not on the devices)"
        )
    return reward, f"{rc.name}: built as the run builds it"


def abstract_run(config: Config, mesh: Mesh, workdir: Path) -> AbstractRun:
    """The :class:`AbstractRun` of ``config`` on ``mesh``; ``workdir`` receives published config files when
    the checkpoint folder is not on this machine."""
    notes = []
    try:
        source = build_prompt_source(config.data)
        vocabulary, arrays = tuple(source.vocabulary), source.batch(0, config.train.prompts_per_step)[1]
    except USER_ERRORS as e:
        # A recipe's prompt file lives on the training machines; text prompts add no arrays to the batch.
        vocabulary, arrays = (), {}
        notes.append(f"prompt source not readable here ({type(e).__name__}): batch = tokens + reward inputs")
    bundle, note = _abstract_bundle(config, vocabulary, workdir)
    reward, reward_note = _reward(config)
    notes += [f"models: {note}", f"reward {reward_note}"]
    frozen = {**bundle.frozen, "reward": reward.params}
    frozen = jax.eval_shape(
        lambda f: placement.cast_floating(f, jnp.dtype(config.model.frozen_dtype)), frozen
    )
    tx = grpo.make_optimizer(config)
    state = jax.eval_shape(lambda p, f: grpo.init_train_state(p, f, tx, config), bundle.params, frozen)
    shardings = grpo.state_shardings(
        state,
        placement.tree_shardings(bundle.params, mesh, config.mesh.rules),
        placement.tree_shardings(frozen, mesh, config.mesh.rules),
        mesh,
    )
    texts = [""] * config.train.prompts_per_step
    host_batch = {
        "tokens": bundle.tokenize(texts),
        **(reward.prepare(texts) if reward.prepare else {}),
        **arrays,
    }
    batch = {k: jax.ShapeDtypeStruct(jnp.shape(v), jnp.asarray(v).dtype) for k, v in host_batch.items()}

    def reward_fn(frozen_tree: Any, images: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        return reward.fn(frozen_tree["reward"], images, batch)

    step = grpo.make_train_step(bundle.pipeline, reward_fn, tx, config, mesh)
    return AbstractRun(state, shardings, batch, step, tuple(notes))


@dataclass(frozen=True)
class CompiledSizes:
    """Per-device bytes XLA assigns to the compiled step (``memory_analysis()``): arguments, outputs, the
    outputs aliasing donated arguments, and temporaries."""

    argument: int
    output: int
    alias: int
    temp: int

    @property
    def peak(self) -> int:
        """What is live at once: the arguments, the outputs that do not reuse a donated argument, and the
        temporaries."""
        return self.argument + self.output - self.alias + self.temp


def compile_step(run: AbstractRun, mesh: Mesh) -> CompiledSizes:
    """The step of ``run`` compiled ahead of time from its abstract arguments (as train.py jits it: state
    donated, batch over data x fsdp), and XLA's per-device sizes of it."""
    jitted = grpo.jit_global_train_step(run.step, run.state, run.shardings, run.batch, mesh)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    analysis = jitted.lower(run.state, run.batch, key).compile().memory_analysis()
    return CompiledSizes(
        argument=int(analysis.argument_size_in_bytes),
        output=int(analysis.output_size_in_bytes),
        alias=int(analysis.alias_size_in_bytes),
        temp=int(analysis.temp_size_in_bytes),
    )
