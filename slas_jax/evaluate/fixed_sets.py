"""Fixed evaluation sets scored during and after training: ground-truth scoring of samples on host,
in-domain and held-out prompt sets, the training reward and held-out rewards on their images (with the
hacking gap).

A *scorer* (``slas_jax.scorers.SCORERS``) is a host function ``(images (n, h, w, 3) float32 in [0, 1], arrays
with leading axis n) -> {"strict": (n,), "partial": (n,)}``; it judges samples independently of the
training reward (e.g. the shapes ground truth beside a learned proxy), which is how reward hacking shows:
the training reward climbs while the truth does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from slas_jax import parallel
from slas_jax.config import Config, DataConfig
from slas_jax.data import build_prompt_source
from slas_jax.data.geneval import TAG_KEY
from slas_jax.errors import ConfigError, RewardError
from slas_jax.evaluate.report import save_grid
from slas_jax.grpo import make_generate
from slas_jax.pipelines import PipelineBundle
from slas_jax.reward_mix import RewardMix, mixed_rewards
from slas_jax.rewards import Reward, build_reward, check_reads
from slas_jax.scorers import SCORERS


def repeat_rows(arrays: Mapping[str, np.ndarray], times: int) -> dict[str, np.ndarray]:
    """Repeats each array's leading (prompt) axis ``times`` times: per-prompt -> per-sample."""
    return {k: np.repeat(np.asarray(v), times, axis=0) for k, v in arrays.items()}


@dataclass
class EvalSet:
    """A fixed set of evaluation prompts: texts, tokenised batch (device arrays), host arrays, and the
    per-image batch of each reward that scores the set's images (``reward`` and the held-out labels)."""

    name: str
    prompts: list[str]
    batch: dict[str, Any]
    arrays: dict[str, np.ndarray]
    reward_batches: dict[str, dict[str, np.ndarray]]


TRAINING_PROMPTS = "train"
"""The fixed set of a run that names none (``eval.sets`` empty): the first ``eval.num_prompts`` prompts of the
training source (``data``)."""


def evaluates(config: Config, reward: Reward) -> bool:
    """Whether a run scores fixed sets (and writes grids, curves and ``summary.md``): when a scorer, held-out
    rewards or fixed sets are configured, and for every run of a diffusers-folder backbone (SD, FLUX) whose
    training reward is a JAX reward, which then scores the training prompts' fixed set."""
    ec = config.eval
    return bool(ec.scorer or ec.rewards or ec.sets or (config.model.checkpoint and reward.fn is not None))


def gain(value: float, baseline: tuple[float, float]) -> float:
    """How far ``value`` moved from the first evaluation's (mean, std), in units of that std."""
    mean, std = baseline
    return (value - mean) / max(std, 1e-12)


class Evaluator:
    """Scores rollout samples every step and fixed prompt sets every ``eval.every`` steps (``eval.sets``, or
    without any the training prompts' set :data:`TRAINING_PROMPTS`).

    ``evaluate(params, frozen)`` samples ``samples_per_prompt`` images for each fixed prompt with a fixed
    key (the same noise before and after training) and returns ``{f"{set}/{metric}": mean}``: the scorer's
    metrics (``eval.scorer``), the training reward (``<set>/reward``, for a JAX training reward) and each
    held-out reward (``eval.rewards``: ``<set>/<label>``, with the hacking gap ``<set>/gap/<label>``, the
    training reward's :func:`gain` minus the held-out one's since the first evaluation of this process), with
    the same scores per prompt.
    """

    def __init__(
        self,
        config: Config,
        bundle: PipelineBundle,
        prepare: Callable[[list[str]], dict[str, Any]],
        reward: Reward | None = None,
    ):
        ec = config.eval
        scorer = SCORERS.get(ec.scorer) if ec.scorer else None
        self.config = ec
        self.scorer = scorer.fn if scorer is not None else None
        self.generate = make_generate(bundle.pipeline, config)
        self.key = jax.random.PRNGKey(ec.seed)
        mix = RewardMix.from_config(config.reward, config.advantage.eps)
        self.train_reward = None
        if reward is not None and reward.fn is not None:
            fn = reward.fn

            def train_reward(params: Any, images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
                scores = fn(params, images, batch)
                return scores if mix is None else mixed_rewards(scores, mix)

            self.train_reward = jax.jit(train_reward)
        held_rewards = {}
        for label, spec in ec.rewards.items():
            held_rewards[label] = build_reward(spec["name"], spec.get("options", {}))
            if held_rewards[label].fn is None:
                raise ConfigError(
                    f"config.eval.rewards.{label}.name: {spec['name']!r} runs on the host; held-out rewards are "
                    "JAX rewards"
                )
        # Held-out rewards by label: the jitted fn and its parameters.
        self.held_out = {label: (jax.jit(held.fn), held.params) for label, held in held_rewards.items()}
        self.sets = []
        self.baselines: dict[str, tuple[float, float]] = {}
        sets = {name: (spec, f"eval.sets.{name}") for name, spec in ec.sets.items()} or {
            TRAINING_PROMPTS: ({"name": config.data.name, "options": config.data.options}, "data")
        }
        for name, (source_config, field) in sets.items():
            source = build_prompt_source(
                DataConfig(name=source_config["name"], options=source_config.get("options", {})), field
            )
            readers = [(f"scorer {ec.scorer!r}", scorer.reads)] if scorer is not None else []
            if self.train_reward is not None:
                readers.append((f"reward {config.reward.name!r}", reward.reads))
            readers += [(f"held-out reward {label!r}", held.reads) for label, held in held_rewards.items()]
            for reader, reads in readers:
                check_reads(
                    reads, source.arrays, reader, f"prompt source {source_config['name']!r}", f"{field}.name"
                )
            prompts, arrays = source.batch(0, ec.num_prompts)
            batch = prepare(prompts)
            reward_batches = {}
            if self.train_reward is not None:
                reward_batches["reward"] = repeat_rows({**batch, **arrays}, ec.samples_per_prompt)
            for label, held in held_rewards.items():
                own = held.prepare(prompts) if held.prepare is not None else {}
                reward_batches[label] = repeat_rows({**arrays, **own}, ec.samples_per_prompt)
            self.sets.append(EvalSet(name, prompts, batch, arrays, reward_batches))

    def score_rollout(
        self, images: np.ndarray, arrays: Mapping[str, np.ndarray], group_size: int
    ) -> dict[str, float]:
        """Ground truth of the training samples: ``truth/strict`` and ``truth/partial`` means (none without
        a scorer)."""
        if self.scorer is None:
            return {}
        scores = self.scorer(images, repeat_rows(arrays, group_size))
        return {f"truth/{k}": float(np.mean(v)) for k, v in scores.items()}

    def sample(self, params: Any, frozen: Any, eval_set: EvalSet) -> np.ndarray:
        """(prompts x samples_per_prompt, h, w, 3) images of ``eval_set``, sample b from prompt b // spp."""
        images = self.generate(
            params, frozen, eval_set.batch, self.key, samples_per_prompt=self.config.samples_per_prompt
        )
        return parallel.host_value(images)  # on a pod the images are spread over the processes

    def rewards(self, frozen: Any, eval_set: EvalSet, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per image (n,): the training reward (``reward``) and each held-out reward (by label)."""
        out = {}
        for key, batch in eval_set.reward_batches.items():
            fn, params = (self.train_reward, frozen["reward"]) if key == "reward" else self.held_out[key]
            out[key] = np.asarray(fn(params, images, batch))
        return out

    def evaluate(
        self, params: Any, frozen: Any
    ) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, np.ndarray]]:
        """Mean scores per fixed set, e.g. ``held_out/strict``; per set its scores per prompt (``{set:
        {"scores": {metric: (prompts,) list of float, the mean over the prompt's samples}, "rewards": {"reward"
        and each held-out label: (prompts,) list}, "tags": (prompts,) list of int category (empty without
        GenEval tags)}}``, JSON-ready, for intervals over prompts); and the images scored, by set name."""
        scores_out, per_prompt, images_out = {}, {}, {}
        spp = self.config.samples_per_prompt

        def by_prompt(values: np.ndarray) -> list[float]:
            return np.asarray(values, np.float64).reshape(-1, spp).mean(1).tolist()

        for eval_set in self.sets:
            images = self.sample(params, frozen, eval_set)
            scores = {}
            if self.scorer is not None:
                scores = self.scorer(images, repeat_rows(eval_set.arrays, spp))
                scores_out.update({f"{eval_set.name}/{k}": float(np.mean(v)) for k, v in scores.items()})
            rewards = self.rewards(frozen, eval_set, images)
            per_prompt[eval_set.name] = {
                "scores": {k: by_prompt(v) for k, v in scores.items()},
                "rewards": {k: by_prompt(v) for k, v in rewards.items()},
                "tags": np.asarray(eval_set.arrays.get(TAG_KEY, ()), np.int64).tolist(),
            }
            for key, values in rewards.items():
                where = f"{eval_set.name}/{key}"
                if not np.all(np.isfinite(values)):
                    who = "the training reward" if key == "reward" else f"held-out reward {key!r}"
                    raise RewardError(f"{who} scored non-finite values on evaluation set {eval_set.name!r}")
                self.baselines.setdefault(where, (float(np.mean(values)), float(np.std(values))))
                scores_out[where] = float(np.mean(values))
            if "reward" in rewards:
                train_gain = gain(
                    scores_out[f"{eval_set.name}/reward"], self.baselines[f"{eval_set.name}/reward"]
                )
                for label in self.held_out:
                    where = f"{eval_set.name}/{label}"
                    scores_out[f"{eval_set.name}/gap/{label}"] = train_gain - gain(
                        scores_out[where], self.baselines[where]
                    )
            images_out[eval_set.name] = images
        return scores_out, per_prompt, images_out

    def grid(self, images: Mapping[str, np.ndarray], path: str | Path, title: str) -> None:
        """A PNG grid of ``evaluate``'s images: one row per fixed set, its first ``grid_prompts`` prompts x
        their samples, captioned."""
        rows = []
        spp = self.config.samples_per_prompt
        for eval_set in self.sets:
            n = min(self.config.grid_prompts, len(eval_set.prompts))
            shown = images[eval_set.name][: n * spp]
            rows.append((eval_set.name, eval_set.prompts[:n], shown.reshape(n, spp, *shown.shape[1:])))
        save_grid(rows, path, title)
