"""What rerunning a run's command finds in its folder, and what it may do there.

- Resume: the newest intact checkpoint (``checkpoint.Checkpointer.newest_intact``; newer damaged ones are
  reported) continues, when the config's :func:`fingerprint` equals the one saved with it. A change of any
  field outside :data:`RESUMABLE` (model size, KL on/off, group size, advantage method, sampler steps, ...)
  is refused in one line naming the fields, unless ``train.resume_override``, which logs the changes.
- Finished: a run whose checkpoint (or, without checkpoints, whose history) reached ``train.num_steps`` is
  left as it is.
- Refuse: a folder holding an earlier run's outputs but no checkpoint to continue from is not overwritten.

The run folder also keeps what a resumed run's report needs from before it: the first evaluation's scores
and baselines (:data:`BEFORE_FILE`) and every step's record (:data:`HISTORY_FILE`), so that a resumed run's
summary and curves cover the whole run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from etils import epath

from slas_jax.checkpoint import Checkpointer, CheckpointError
from slas_jax.config import Config, ConfigError, json_ready
from slas_jax.metrics import METRICS_FILE, read_metrics

FINGERPRINT = "fingerprint"
"""The checkpoint metadata key holding the saving run's :func:`fingerprint`."""
OVERRIDES = "resume_overrides"
"""The checkpoint metadata key listing the changes resumes accepted through ``train.resume_override``."""
BEFORE_FILE = "before.json"
HISTORY_FILE = "history.jsonl"
EVAL_SCORES_FILE = "eval_scores.jsonl"
"""Per-prompt scores of each fixed-set evaluation (``Evaluator.evaluate``), by the steps trained before it."""
SUMMARY_FILE = "summary.md"
RESUMABLE = (
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.export_every",
    "train.output_dir",
    "train.tensorboard",
    "train.wandb_project",
    "train.profile_steps",
    "train.keep_checkpoints",
    "train.keep_best_metric",
    "train.keep_best_mode",
    "train.resume_override",
    "mesh",
    "model.remat",
    "reward.host_chunks",
    "eval.every",
    "eval.grid_prompts",
)
"""Config fields (and sections) a resumed run may change: length, cadence, outputs and the memory / device
layout (mesh, remat, host reward chunks: the same maths, other float rounding or noise draws). Every other
field changes what is trained or measured, so a resume refuses a change of it."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def fingerprint(config: Config) -> dict[str, Any]:
    """The config's fields a resume must keep, as JSON values by dotted name (``"train.group_size": 8``;
    mappings such as ``model.architecture`` flattened to their leaves); the :data:`RESUMABLE` ones left out."""
    return {
        name: value
        for name, value in _flat(json_ready(config)).items()
        if not any(name == r or name.startswith(f"{r}.") for r in RESUMABLE)
    }


def changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name: old -> new"`` for every field whose value differs (``unset`` where one side lacks it)."""

    def shown(value: Any) -> str:
        text = "unset" if value is _UNSET else json.dumps(value)
        return text if len(text) <= 60 else f"{text[:57]}..."

    return [
        f"{name}: {shown(saved.get(name, _UNSET))} -> {shown(current.get(name, _UNSET))}"
        for name in sorted(set(saved) | set(current))
        if saved.get(name, _UNSET) != current.get(name, _UNSET)
    ]


_UNSET = object()


def check_fingerprint(metadata: Mapping[str, Any], config: Config, where: str) -> list[str]:
    """The changes between the config that wrote a checkpoint (its ``metadata``; ``where`` names it) and
    ``config``. ConfigError naming them unless there are none or ``train.resume_override`` is set."""
    if FINGERPRINT not in metadata:
        changed = [f"{where} records no config (written by an older slas-jax)"]
    else:
        changed = changes(metadata[FINGERPRINT], fingerprint(config))
    if changed and not config.train.resume_override:
        raise ConfigError(
            f"config: {where} was written with another config ({'; '.join(changed)}); rerun with the config "
            "that wrote it, choose another train.output_dir, or set train.resume_override=True to resume anyway"
        )
    return changed


@dataclass(frozen=True)
class Resume:
    """What a run does in its folder: start at ``step`` (0: a fresh run), or nothing (``finished``: the
    run is done, ``line`` says so). ``warnings``: one line each, for the user (damaged checkpoints skipped,
    accepted overrides); ``changed``: the accepted config changes; ``overrides``: the run's log of them."""

    step: int = 0
    finished: bool = False
    line: str = ""
    warnings: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)


def plan_resume(config: Config, checkpointer: Checkpointer, folder: str | epath.PathLike) -> Resume:
    """Where the run of ``config`` in run ``folder`` (its ``checkpointer``) starts, before any model is built.
    Damaged step folders newer than the one resumed from are moved aside (``Checkpointer.set_aside``).
    Raises CheckpointError when the folder holds checkpoints but none is intact, ConfigError when the config
    does not fit the checkpoint or when an earlier run's outputs would be overwritten."""
    folder = epath.Path(folder)
    num_steps = config.train.num_steps
    step, damaged = checkpointer.newest_intact()
    warnings = [f"{d.line()}; skipped" for d in damaged]
    if step is None and damaged:
        raise CheckpointError(
            f"no intact checkpoint in {checkpointer.directory}: {'; '.join(d.line() for d in damaged)}; move the "
            "folder away to start the run afresh"
        )
    if step is not None:
        if any(d.step == step for d in damaged):
            warnings.append(f"checkpoint {step} has no manifest, the only one left: restoring it unverified")
            damaged = [d for d in damaged if d.step != step]
        where = f"checkpoint {step} in {checkpointer.directory}"
        metadata = checkpointer.metadata(step)
        changed = check_fingerprint(metadata, config, where)
        overrides = list(metadata.get(OVERRIDES, []))
        if changed:
            warnings.append(
                f"resuming {where} despite changed config (train.resume_override): {'; '.join(changed)}"
            )
            overrides.append({"step": step, "changes": changed})
        if step >= num_steps:
            return Resume(
                finished=True,
                line=f"finished: {folder} holds all {num_steps} steps (checkpoint {step}); nothing to do (raise "
                "train.num_steps to train on)",
                warnings=warnings,
            )
        if damaged:
            moved = checkpointer.set_aside(damaged)
            warnings.append(f"moved the damaged checkpoints to {moved}; resuming from checkpoint {step}")
        return Resume(step=step, warnings=warnings, changed=changed, overrides=overrides)
    history = read_metrics(folder / HISTORY_FILE) if (folder / HISTORY_FILE).is_file() else []
    if history and history[-1]["step"] >= num_steps - 1:
        return Resume(
            finished=True,
            line=f"finished: {folder} holds all {num_steps} steps ({HISTORY_FILE} through step {num_steps - 1}, "
            "no checkpoint); nothing to do",
        )
    earlier = [name for name in (METRICS_FILE, HISTORY_FILE, SUMMARY_FILE) if _holds(folder / name)]
    if earlier:
        raise ConfigError(
            f"config.train.output_dir: {folder} holds an earlier run ({', '.join(earlier)}) but no checkpoint to "
            "resume it from; choose another train.output_dir or delete those files to start afresh"
        )
    return Resume()


def _holds(path: epath.Path) -> bool:
    return path.is_file() and bool(path.read_text().strip())


def save_before(
    folder: str | epath.PathLike, scores: Mapping[str, float], baselines: Mapping[str, Any]
) -> None:
    """Keeps the first evaluation (``scores`` by metric, the evaluator's ``baselines``: (mean, std) by metric)
    in ``folder/before.json``."""
    path = epath.Path(folder) / BEFORE_FILE
    path.write_text(
        json.dumps({"scores": dict(scores), "baselines": {k: list(v) for k, v in baselines.items()}})
    )


def load_before(
    folder: str | epath.PathLike,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]] | None:
    """(scores, baselines) kept by :func:`save_before`, or None when the folder has none."""
    path = epath.Path(folder) / BEFORE_FILE
    if not path.is_file():
        return None
    kept = json.loads(path.read_text())
    return dict(kept["scores"]), {k: (float(m), float(s)) for k, (m, s) in kept["baselines"].items()}


def history_records(folder: str | epath.PathLike) -> list[dict[str, float]]:
    """Every step's record of ``folder/history.jsonl`` in step order, as the loop made them (NaN restored,
    the ``step`` key dropped)."""
    path = epath.Path(folder) / HISTORY_FILE
    records = read_metrics(path) if path.is_file() else []
    return [
        {k: (math.nan if v is None else v) for k, v in record.items() if k != "step"} for record in records
    ]
