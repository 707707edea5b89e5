"""Orbax checkpoints of the train state: save every N steps, restore the latest onto the current mesh.

What is saved is everything a step changes (params, optimizer state, step, rng, data position, reference
params); the frozen models are reloaded from their own checkpoints. Leaves are stored under their pytree
paths, so a checkpoint restores onto any mesh (each leaf onto the sharding the new run asks for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from slas_jax.grpo import TrainState

_SAVED_FIELDS = ("step", "params", "opt_state", "rng", "data_index", "ref_params")


def _key(path: tuple[Any, ...]) -> str:
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return ".".join(str(p) for p in parts)


def _flatten(tree: Any) -> dict[str, Any]:
    return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved(state: TrainState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in _SAVED_FIELDS}


class Checkpointer:
    """Saves and restores :class:`TrainState` under ``directory`` (one sub-folder per step)."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def save(self, state: TrainState, metadata: dict[str, Any] | None = None) -> None:
        """Writes ``state`` at its step (plus JSON ``metadata``) and waits until it is on disk."""
        step = int(state.step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_flatten(_saved(state))), extra=ocp.args.JsonSave(metadata or {})
            ),
        )
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, state: TrainState, shardings: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The latest checkpoint restored into the structure of ``state``, each leaf on its sharding."""
        step = self.manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        abstract = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            _saved(state),
            _saved(shardings),
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_flatten(abstract)), extra=ocp.args.JsonRestore()
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
        """(step, params) of the latest checkpoint: only the policy's parameters, restored into the structure
        of ``params`` (e.g. a freshly built backbone) on the shardings its leaves have; the optimizer state,
        twice the parameters' size, is never read (what ``python -m slas_jax.evaluate --run_dir`` samples)."""
        step = self.manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        abstract = _flatten(
            {
                "params": jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
                )
            }
        )
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), abstract)
        # The state item was written by StandardSave, a PyTree checkpoint: read directly, it restores a subset.
        leaves = ocp.PyTreeCheckpointer().restore(
            Path(self.manager.directory) / str(step) / "state",
            args=ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True),
        )
        restored = jax.tree_util.tree_map_with_path(
            lambda path, _leaf: leaves[_key((jax.tree_util.DictKey("params"), *path))], params
        )
        return step, restored

    def close(self) -> None:
        self.manager.close()
