"""Per-device bytes of a GRPO step, row by row, from an abstract train state and its shardings.

The state rows are exact: each leaf's shard shape (``NamedSharding.shard_shape``) times its item size, summed
on one device (the largest shard where a dimension does not divide evenly: jax pads shards to equal sizes).
The activation row is XLA's ``temp_size_in_bytes`` of the compiled step (:mod:`slas_jax.plan.compile`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from slas_jax import grpo, lora, param_paths
from slas_jax.config import Config

GIB = 1024**3


@dataclass(frozen=True)
class Row:
    """One line of a plan: ``bytes`` per device, and where the number comes from."""

    name: str
    bytes: int
    source: str


def leaf_bytes(leaf: Any, sharding: jax.sharding.Sharding) -> int:
    """Bytes one device holds of an array shaped like ``leaf`` (ShapeDtypeStruct or array) under
    ``sharding``."""
    shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def tree_bytes(tree: Any, shardings: Any) -> int:
    """Per-device bytes of every leaf of ``tree`` under the matching leaf of ``shardings``."""
    leaves = jax.tree.leaves(tree)
    return sum(leaf_bytes(x, s) for x, s in zip(leaves, jax.tree.leaves(shardings), strict=True))


def trainable_mask(params: Any, config: Config) -> Any:
    """True for each backbone leaf the optimizer updates without LoRA: those matching ``optim.trainable`` (all
    of them when it is empty), as :func:`slas_jax.grpo.make_optimizer` masks them."""
    if not config.optim.trainable:
        return jax.tree.map(lambda _: True, params)
    return param_paths.select(params, config.optim.trainable, "optim.trainable")


def state_rows(state: grpo.TrainState, shardings: grpo.TrainState, config: Config) -> list[Row]:
    """The rows of the train state (abstract, e.g. from ``jax.eval_shape``) under ``shardings``: the
    trained and untrained backbone parameters (by :func:`trainable_mask`), the optimizer state, the KL
    reference, each frozen model and the scalars: the step's donated arguments."""
    exact = "shapes x shardings (exact)"
    params = list(zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params), strict=True))
    if lora.has_adapters(state.params):
        trained = tree_bytes(lora.split(state.params)[0], lora.split(shardings.params)[0])
    else:
        mask = jax.tree.leaves(trainable_mask(state.params, config))
        trained = sum(leaf_bytes(x, s) for (x, s), hit in zip(params, mask, strict=True) if hit)
    rows = [
        Row("params (trained)", trained, exact),
        Row("params (not trained)", sum(leaf_bytes(x, s) for x, s in params) - trained, exact),
        Row("optimizer state", tree_bytes(state.opt_state, shardings.opt_state), exact),
    ]
    if state.ref_params is not None:
        rows.append(Row("KL reference", tree_bytes(state.ref_params, shardings.ref_params), exact))
    frozen: Mapping[str, Any] = state.frozen
    for name in sorted(frozen):
        rows.append(Row(f"frozen: {name}", tree_bytes(frozen[name], shardings.frozen[name]), exact))
    scalars = (state.step, state.rng, state.data_index)
    rows.append(
        Row(
            "step, rng, data index",
            tree_bytes(scalars, (shardings.step, shardings.rng, shardings.data_index)),
            exact,
        )
    )
    return rows


def gradient_bytes(state: grpo.TrainState, shardings: grpo.TrainState) -> int:
    """Per-device bytes of the gradient accumulator, one array per differentiated leaf shaped and sharded
    like it (:func:`slas_jax.grpo.accumulate_gradients` carries the whole backbone, trained or not, or with
    LoRA the adapters alone, :func:`slas_jax.grpo.split_trained`); it lives among the compiled step's
    temporaries."""
    return tree_bytes(
        grpo.split_trained(state.params, None)[0], grpo.split_trained(shardings.params, None)[0]
    )


def format_table(rows: list[Row], header: str) -> str:
    """The plan as text: ``header``, one line per row (per device, in GiB, or MiB for plans under 1 GiB,
    and its source) and the total."""
    unit, scale = ("GiB", GIB) if total(rows) >= GIB else ("MiB", 1024**2)
    width = max(len(r.name) for r in rows) + 2
    lines = [header, f"{'row':<{width}}{unit + '/device':>12}  source"]
    lines += [f"{r.name:<{width}}{r.bytes / scale:>12.3f}  {r.source}" for r in rows]
    lines.append(f"{'total':<{width}}{total(rows) / scale:>12.3f}")
    return "\n".join(lines)


def total(rows: list[Row]) -> int:
    """The per-device total of ``rows`` in bytes."""
    return sum(r.bytes for r in rows)
