"""Device mesh, logical-axis sharding rules, and multi-host initialisation.

The mesh has three named axes: ``data`` (batch), ``fsdp`` (batch and parameter sharding) and ``tensor``
(model-parallel features). Parameters carry logical axis names (see ``slas_jax.models.layers``); a rules table
(``config.mesh.rules``, default :data:`DEFAULT_RULES`) maps each logical name to a mesh axis. A dimension
whose size the mesh axis does not divide, or whose mesh axis is already used by another dimension of the same
array, stays replicated, so tiny test models run on any mesh; :func:`replication_report` names every
parameter that fell back so, with its size, at start-up.

Multi-host input: every process runs the same program on its own slice of the global prompt batch.
:func:`process_rows` says which rows of a batch this process's devices hold, and :func:`global_batch` joins
the processes' host arrays into global ``jax.Array`` s (``jax.make_array_from_process_local_data``) before
they enter a jitted step. Files of a run are written by the primary process (:func:`is_primary`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | None], ...]

DEFAULT_RULES: Rules = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", "tensor"),
    ("conv_in", "fsdp"),
    ("norm", None),
    ("layers", None),
)


def make_mesh(
    *, data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh; ``data=-1`` takes all devices left after fsdp and tensor."""
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % (fsdp * tensor):
            raise ValueError(f"mesh fsdp={fsdp} x tensor={tensor} does not divide {len(devices)} devices")
        data = len(devices) // (fsdp * tensor)
    if data * fsdp * tensor != len(devices):
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {data * fsdp * tensor} devices, "
            f"{len(devices)} are available; set mesh.data=-1 to use all of them"
        )
    return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES)


@dataclass(frozen=True)
class Fallback:
    """A dimension that stays replicated although its rule names a mesh axis of size > 1: ``logical`` (its
    logical axis name) maps to ``mesh_axis`` of ``mesh_size`` devices, which does not divide ``size``
    (``reason`` "axis does not divide") or which another dimension of the array already took ("axis
    taken")."""

    logical: str
    mesh_axis: str
    mesh_size: int
    size: int
    reason: str


def place(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> tuple[P, list[Fallback]]:
    """The PartitionSpec of an array of ``shape`` whose dimensions carry logical ``axes`` (None: replicated),
    and the dimensions whose rule could not be followed (see :class:`Fallback`). Dimensions are placed in
    order: the first one that maps to a mesh axis takes it."""
    table = dict(rules)
    used: set[str] = set()
    spec, fallbacks = [], []
    for name, size in zip(axes, shape, strict=True):
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis is None:
            spec.append(None)
            continue
        taken, divides = mesh_axis in used, size % mesh.shape[mesh_axis] == 0
        if taken or not divides:
            spec.append(None)
            if mesh.shape[mesh_axis] > 1:
                reason = "axis taken" if taken else "axis does not divide"
                fallbacks.append(Fallback(name, mesh_axis, mesh.shape[mesh_axis], size, reason))
            continue
        used.add(mesh_axis)
        spec.append(mesh_axis)
    return P(*spec), fallbacks


def logical_to_spec(
    axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> P:
    """PartitionSpec for an array of ``shape`` whose dimensions carry logical ``axes`` (None: replicated)."""
    return P() if axes is None else place(axes, shape, mesh, rules)[0]


def _logical_axes(var: nnx.Variable) -> Sequence[str | None] | None:
    return var.get_metadata().get("out_sharding")


def _variables(state: nnx.State) -> list[tuple[str, nnx.Variable]]:
    """(dotted path, Variable) of every leaf of ``state``."""
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return [(jax.tree_util.keystr(path, simple=True, separator="."), var) for path, var in leaves]


def replication_report(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, listed: int = 8) -> str:
    """One line naming the parameters of ``state`` (an nnx.State with logical-axis metadata) that fall back
    to replication on ``mesh`` (:func:`place`), largest first (``listed`` of them, then a count), with their
    bytes, e.g. ``replicated (axis does not divide): 3 parameters, 1.2 MB: conv_in.kernel (0.4 MB,
    conv_in=3 on fsdp=4), ...``; "" when none does."""
    hits = []
    for path, var in _variables(state):
        axes = _logical_axes(var)
        if axes is None:
            continue
        value = var.get_value()  # an array or, for an abstract state, a ShapeDtypeStruct
        fallbacks = place(axes, np.shape(value), mesh, rules)[1]
        if fallbacks:
            hits.append((math.prod(np.shape(value)) * np.dtype(value.dtype).itemsize, path, fallbacks))
    if not hits:
        return ""
    hits.sort(key=lambda hit: -hit[0])
    reasons = sorted({f.reason for _, _, fallbacks in hits for f in fallbacks})
    names = [
        f"{path} ({_readable(size)}, "
        + ", ".join(f"{f.logical}={f.size} on {f.mesh_axis}={f.mesh_size}" for f in fallbacks)
        + ")"
        for size, path, fallbacks in hits[:listed]
    ]
    more = f", and {len(hits) - listed} more" if len(hits) > listed else ""
    total = sum(size for size, _, _ in hits)
    return (
        f"replicated ({' / '.join(reasons)}): {len(hits)} parameter{'s' * (len(hits) > 1)}, {_readable(total)}: "
        f"{', '.join(names)}{more}"
    )


def _readable(size: int) -> str:
    """Bytes as "12 B", "1.7 KB", "3.4 MB" or "2.0 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """The tree of ``state`` with each leaf replaced by its NamedSharding, from the ``out_sharding``
    logical-axis metadata of its Variable (same pytree structure, so it zips with the state)."""

    def leaf_sharding(var: nnx.Variable) -> nnx.Variable:
        axes = _logical_axes(var)
        return var.replace(NamedSharding(mesh, logical_to_spec(axes, np.shape(var.get_value()), mesh, rules)))

    return jax.tree.map(leaf_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def tree_shardings_like(tree, params_shardings, mesh: Mesh):
    """Shardings for an optimizer-state-like tree: subtrees shaped like the parameters (Adam's mu and nu)
    take the parameters' shardings, everything else (step counters, scalars) is replicated."""
    structure = jax.tree.structure(params_shardings)

    def is_param_like(sub) -> bool:
        return jax.tree.structure(sub) == structure

    repl = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda sub: params_shardings if is_param_like(sub) else jax.tree.map(lambda _: repl, sub),
        tree,
        is_leaf=is_param_like,
    )


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Sharding of an array whose leading axis is the (global) batch: split over data x fsdp when they divide
    it, replicated otherwise (e.g. one prompt whose group is spread over the devices)."""
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if not shape or shape[0] % devices:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (len(shape) - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, P())


def addressable_rows(sharding: jax.sharding.Sharding, shape: Sequence[int]) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of an array of ``shape`` (leading axis the batch) on ``sharding`` that
    this process's devices hold, one per distinct shard, sorted by start (devices along the tensor axis hold
    the same rows)."""
    spans = {
        index[0].indices(shape[0])[:2]
        for index in sharding.addressable_devices_indices_map(tuple(shape)).values()
    }
    return sorted(spans)


def process_rows(mesh: Mesh, size: int) -> list[tuple[int, int]]:
    """The rows of a global batch of ``size`` (on :func:`batch_sharding`) that this process loads, as sorted,
    disjoint (start, stop) ranges: its devices' shards, adjacent ones merged; all of [0, size) when the batch
    is replicated (it does not divide over data x fsdp) or the run has one process."""
    merged: list[tuple[int, int]] = []
    for start, stop in addressable_rows(batch_sharding(mesh, (size,)), (size,)):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def global_batch(mesh: Mesh, arrays: Mapping[str, np.ndarray], size: int) -> dict[str, jax.Array]:
    """Global batch arrays (leading axis ``size``, on :func:`batch_sharding`) from this process's host arrays.

    ``arrays``: each leaf with leading axis either the rows :func:`process_rows` names, concatenated in
    order, or the whole batch (``size`` rows; every process passes the same); other axes whole. Every
    process of the run calls it with the same ``size`` and shapes (the jitted step takes global arrays:
    numpy arrays cannot enter a jit whose sharding spans processes)."""
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        shape = (size, *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, shape), value, shape)
    return out


def host_value(tree: Any) -> Any:
    """``tree`` with every array leaf as the numpy array of its global value, on every process: on a
    multi-process run an all-gather across processes (every process must call it), else ``jax.device_get``."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def is_primary() -> bool:
    """Whether this process writes the run's files (metrics, summaries, grids, exports' single-writer
    parts): process 0, so that hosts sharing a run folder do not write the same file."""
    return jax.process_index() == 0


def process_prefix() -> str:
    """``"[process i/n] "`` on a multi-process run, "" on one process: what this process's log lines start
    with, so that interleaved output of the hosts says where each line comes from."""
    if jax.process_count() == 1:
        return ""
    return f"[process {jax.process_index()}/{jax.process_count()}] "


def initialize_distributed(coordinator_address: str | None, num_processes: int, process_id: int) -> None:
    """Joins a multi-host run. With no coordinator address JAX auto-detects the cluster (Cloud TPU, SLURM)."""
    if coordinator_address is None:
        jax.distributed.initialize()
        return
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
