"""Orbax checkpoints of the train state that survive anything: saved in the background, sealed with checksums,
restored from the newest intact one onto the current mesh.

What is saved is everything a step changes (params, optimizer state, step, rng, data position, reference
params); the frozen models are reloaded from their own checkpoints. Leaves are stored under their pytree
paths, so a checkpoint restores onto any mesh (each leaf onto the sharding the new run asks for).

A save returns once the arrays are copied off the devices; Orbax writes them while the loop goes on, and a
background thread then writes :data:`MANIFEST` into the step folder: the size and sha256 of every file
Orbax committed. A step folder is *intact* when its manifest is there and every file it lists has its size
and hash. Restoring takes the newest intact step; newer damaged ones (a flipped byte, a truncated or
overwritten file, a missing state, an empty folder, a save cut short) are reported and, when training
resumes, moved to ``<run>/damaged_checkpoints/`` so that the steps can be saved again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from slas_jax.errors import UserError
from slas_jax.grpo import TrainState

_SAVED_FIELDS = ("step", "params", "opt_state", "rng", "data_index", "ref_params")
MANIFEST = "slas_manifest.json"
"""The file in a step folder listing ``{relative path: {"size", "sha256"}}`` of the files Orbax wrote."""
DAMAGED = "damaged_checkpoints"
"""Beside the checkpoint folder: where the damaged steps newer than the one a run resumed from are moved."""
_CHUNK = 1 << 22


class CheckpointError(UserError):
    """A checkpoint folder holds nothing restorable, or a checkpoint does not fit the run's train state."""


def as_path(directory: str | epath.PathLike) -> epath.Path:
    """An Orbax-ready path: a local path made absolute, a remote one (``gs://bucket/...``) kept as it is."""
    path = epath.Path(directory)
    return path if "://" in str(directory) or path.is_absolute() else path.absolute()


def _key(path: tuple[Any, ...]) -> str:
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return ".".join(str(p) for p in parts)


def _flatten(tree: Any) -> dict[str, Any]:
    return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved(state: TrainState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in _SAVED_FIELDS}


def _files(folder: epath.Path) -> list[epath.Path]:
    return sorted(root / name for root, _, names in folder.walk() for name in names if name != MANIFEST)


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: epath.Path) -> dict[str, dict[str, Any]]:
    """``{path relative to folder: {"size": bytes, "sha256": hex}}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().length, "sha256": _sha256(p)} for p in _files(folder)
    }


def seal(folder: epath.Path) -> None:
    """Writes ``folder``'s :data:`MANIFEST` (through a temporary file renamed into place: a reader sees the
    whole manifest or none)."""
    temporary = folder / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps({"files": file_manifest(folder)}, indent=1, sort_keys=True))
    temporary.rename(folder / MANIFEST)


def damage(folder: epath.Path) -> str | None:
    """What is wrong with step folder ``folder`` (one phrase), or None when it is intact."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return "the folder is empty"
    if not (folder / MANIFEST).is_file():
        return f"it has no {MANIFEST} (its save never finished)"
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is damaged"
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().length != expected["size"]:
            return f"{name} has {path.stat().length} bytes, {expected['size']} were written"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256 (the file was changed or corrupted)"
    return None


@dataclass(frozen=True)
class Damaged:
    """A step folder that cannot be restored, and why."""

    step: int
    reason: str

    def line(self) -> str:
        return f"checkpoint {self.step} is damaged: {self.reason}"


def _policy(keep: int, best_metric: str | None, best_mode: str) -> policies.PreservationPolicy:
    latest = policies.LatestN(n=keep)
    if best_metric is None:
        return latest
    best = policies.BestN(
        get_metric_fn=lambda metrics: metrics[best_metric],
        reverse=best_mode == "min",
        n=1,
        keep_checkpoints_without_metrics=False,
    )
    return policies.AnyPreservationPolicy([latest, best])


class Checkpointer:
    """Saves and restores :class:`TrainState` under ``directory`` (one sub-folder per step; a local path or
    ``gs://...``), keeping the newest ``keep`` steps and, with ``best_metric``, also the step whose saved
    ``metrics[best_metric]`` is the highest (``best_mode="max"``) or lowest (``"min"``)."""

    def __init__(
        self,
        directory: str | epath.PathLike,
        *,
        keep: int = 2,
        best_metric: str | None = None,
        best_mode: str = "max",
    ):
        self.directory = as_path(directory)
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=_policy(keep, best_metric, best_mode), create=True
            ),
        )
        self._sealing: threading.Thread | None = None
        self._sealing_error: BaseException | None = None

    def save(
        self,
        state: TrainState,
        metadata: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Starts writing ``state`` at its step with JSON ``metadata``; ``metrics`` (scalars by name) rank it for
        ``best_metric``. Returns once the arrays are off the devices; the files are written and sealed in the
        background (:meth:`wait`)."""
        self.wait()
        step = int(state.step)
        ranked = (
            {self.best_metric: metrics[self.best_metric]} if metrics and self.best_metric in metrics else None
        )
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_flatten(_saved(state))),
                extra=ocp.args.JsonSave(dict(metadata or {})),
            ),
            metrics=ranked,
        )
        self._sealing = threading.Thread(target=self._seal, args=(step,), name=f"seal-checkpoint-{step}")
        self._sealing.start()

    def _seal(self, step: int) -> None:
        # The main thread touches the manager again only after wait(), which joins this thread.
        try:
            self.manager.wait_until_finished()
            if jax.process_index() == 0:  # one writer: hosts share the folder
                seal(self.directory / str(step))
        except BaseException as e:  # re-raised in the main thread by wait()
            self._sealing_error = e

    def wait(self) -> None:
        """Blocks until the last save is on disk with its manifest; raises what went wrong in writing it."""
        if self._sealing is not None:
            self._sealing.join()
            self._sealing = None
        if self._sealing_error is not None:
            error, self._sealing_error = self._sealing_error, None
            raise error

    def steps(self) -> list[int]:
        """Every step folder, intact or not, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def newest_intact(self) -> tuple[int | None, list[Damaged]]:
        """The newest intact step (None: none) and the damaged steps newer than it, newest first. Without any
        intact step, the newest step whose save was cut short before its manifest (what a kill -9 while
        hashing leaves when ``keep`` is 1) is returned unverified, listed among the damaged ones too.

        With several processes, process 0 checks the files and the others take its answer."""
        self.wait()
        found, damaged = None, []
        if jax.process_index() == 0:
            for step in self.steps():
                reason = damage(self.directory / str(step))
                if reason is None:
                    found = step
                    break
                damaged.append(Damaged(step, reason))
            if found is None:
                found = next(
                    (d.step for d in damaged if MANIFEST in d.reason and self._committed(d.step)), None
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            found = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if found is None else found)))
            found = None if found < 0 else found
            damaged = [Damaged(s, "found by process 0") for s in self.steps() if found is None or s > found]
        return found, damaged

    def _committed(self, step: int) -> bool:
        folder = self.directory / str(step)
        return all((folder / item).is_dir() for item in ("state", "extra"))

    def set_aside(self, damaged: Sequence[Damaged]) -> epath.Path:
        """Moves the ``damaged`` step folders to ``<directory>/../damaged_checkpoints/<step>[.n]`` (kept for
        inspection, out of the way of new saves); returns that folder."""
        target = self.directory.parent / DAMAGED
        if jax.process_index() == 0:
            target.mkdir(parents=True, exist_ok=True)
            for d in damaged:
                destination, n = target / str(d.step), 1
                while destination.exists():
                    destination, n = target / f"{d.step}.{n}", n + 1
                (self.directory / str(d.step)).rename(destination)
        self.manager.reload()
        return target

    def metadata(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved with ``step``."""
        restored = self.manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
        return dict(restored["extra"])

    def latest_step(self) -> int | None:
        """The newest intact step (None: none)."""
        return self.newest_intact()[0]

    def _restorable(self, step: int | None) -> int:
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no intact checkpoint in {self.directory}")
        return step

    def _fitting(self, step: int, restore: Callable[[], Any]) -> Any:
        try:
            return restore()
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not fit this run's train state ({first[:200]}); "
                "resume with the config that wrote it, or start in another train.output_dir"
            ) from e

    def restore(
        self, state: TrainState, shardings: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Checkpoint ``step`` (default: the newest intact one) restored into the structure of ``state``, each
        leaf on its sharding; and its metadata. CheckpointError when its arrays do not fit ``state``."""
        step = self._restorable(step)
        abstract = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            _saved(state),
            _saved(shardings),
        )
        restored = self._fitting(
            step,
            lambda: self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_flatten(abstract)), extra=ocp.args.JsonRestore()
                ),
            ),
        )
        leaves = restored["state"]
        values = {
            name: jax.tree_util.tree_map_with_path(
                lambda path, _leaf, name=name: leaves[_key((jax.tree_util.DictKey(name), *path))],
                getattr(state, name),
            )
            for name in _SAVED_FIELDS
        }
        return state.replace(**values), dict(restored["extra"])

    def restore_params(self, params: Any) -> tuple[int, Any]:
        """(step, params) of the newest intact checkpoint: only the policy's parameters, restored into the
        structure of ``params`` (e.g. a freshly built backbone) on the shardings its leaves have; the optimizer
        state, twice the parameters' size, is never read (what ``python -m slas_jax.evaluate --run_dir``
        samples)."""
        step = self._restorable(None)
        abstract = _flatten(
            {
                "params": jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
                )
            }
        )
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), abstract)
        # The state item was written by StandardSave, a PyTree checkpoint: read directly, it restores a subset.
        leaves = self._fitting(
            step,
            lambda: ocp.PyTreeCheckpointer().restore(
                self.directory / str(step) / "state",
                args=ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True),
            ),
        )
        restored = jax.tree_util.tree_map_with_path(
            lambda path, _leaf: leaves[_key((jax.tree_util.DictKey("params"), *path))], params
        )
        return step, restored

    def close(self) -> None:
        """Waits for the last save (written and sealed), then releases Orbax's threads."""
        try:
            self.wait()
        finally:
            self.manager.close()
