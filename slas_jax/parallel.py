"""Device mesh, logical-axis sharding rules, and multi-host initialisation.

The mesh has three named axes: ``data`` (batch), ``fsdp`` (batch and parameter sharding) and ``tensor``
(model-parallel features). Parameters carry logical axis names (see ``slas_jax.models.layers``); a rules table
maps each logical name to a mesh axis. A dimension whose size the mesh axis does not divide, or whose mesh axis
is already used by another dimension of the same array, stays replicated, so tiny test models run on any mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
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


def logical_to_spec(
    axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> P:
    """PartitionSpec for an array of ``shape`` whose dimensions carry logical ``axes`` (None: replicated)."""
    if axes is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
            continue
        used.add(mesh_axis)
        spec.append(mesh_axis)
    return P(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """The tree of ``state`` with each leaf replaced by its NamedSharding, from the ``out_sharding``
    logical-axis metadata of its Variable (same pytree structure, so it zips with the state)."""

    def leaf_sharding(var: nnx.Variable) -> nnx.Variable:
        axes = var.get_metadata().get("out_sharding")
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


def initialize_distributed(coordinator_address: str | None, num_processes: int, process_id: int) -> None:
    """Joins a multi-host run. With no coordinator address JAX auto-detects the cluster (Cloud TPU, SLURM)."""
    if coordinator_address is None:
        jax.distributed.initialize()
        return
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
