"""Where the train state's arrays live, and how they get there without a whole copy on one device.

- Frozen models (text encoders, VAE, reward): stored in ``model.frozen_dtype`` (float32 or bfloat16) and
  sharded over the mesh by the same logical-axis rules as the backbone (``embed`` over fsdp, ...), instead of
  replicated on every chip. Leaves without logical axes (token arrays, plugin rewards' plain dicts) stay
  replicated.
- The train state: built by one jit whose ``out_shardings`` are the state's shardings, so Adam's moments and
  the KL reference copy are created on their shards (``tx.init`` outside a jit would build them whole on
  one device first).
- Random initialisation: ``nnx.eval_shape`` gives the shardings, then the initialiser runs under a jit with
  those ``out_shardings``, so no device ever holds more than its shard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from slas_jax import grpo, parallel
from slas_jax.config import Config


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(tree: Any, mesh: Mesh, rules: parallel.Rules = parallel.DEFAULT_RULES) -> Any:
    """The NamedSharding of every leaf of ``tree`` (arrays or ShapeDtypeStructs, same structure): an
    ``nnx.Variable`` by its logical axes (:func:`slas_jax.parallel.logical_to_spec`), anything else
    replicated."""

    def leaf_sharding(leaf: Any) -> Any:
        return (
            parallel.state_shardings(leaf, mesh, rules) if _is_variable(leaf) else parallel.replicated(mesh)
        )

    return jax.tree.map(leaf_sharding, tree, is_leaf=_is_variable)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating-point leaf cast to ``dtype``; integer leaves (tokens, RNG keys) kept."""

    def cast(x: Any) -> Any:
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def place_frozen(
    frozen: Any, dtype: str, mesh: Mesh, rules: parallel.Rules = parallel.DEFAULT_RULES
) -> tuple[Any, Any]:
    """The frozen tree on ``mesh`` in ``dtype`` ("float32" | "bfloat16" for its floating leaves) and its
    shardings (:func:`tree_shardings`). Each leaf is moved onto its shards first, then cast there (a jit
    with the same shardings in and out, its input donated), so no chip holds a whole float32 copy."""
    shardings = tree_shardings(frozen, mesh, rules)
    placed = jax.device_put(frozen, shardings)
    if jnp.dtype(dtype) == jnp.float32:
        return placed, shardings
    cast = jax.jit(lambda t: cast_floating(t, jnp.dtype(dtype)), out_shardings=shardings, donate_argnums=0)
    return cast(placed), shardings


def init_state(
    params: Any,
    frozen: Any,
    tx: optax.GradientTransformation,
    config: Config,
    mesh: Mesh,
    frozen_shardings: Any,
    rules: parallel.Rules = parallel.DEFAULT_RULES,
) -> tuple[grpo.TrainState, grpo.TrainState]:
    """A fresh :class:`~slas_jax.grpo.TrainState` (:func:`~slas_jax.grpo.init_train_state`) created on its
    shardings, and those shardings. ``params`` (the backbone, nnx.State) and ``frozen`` are donated: they
    become the state's fields without a second copy."""
    param_shardings = tree_shardings(params, mesh, rules)

    def init(p: Any, f: Any) -> grpo.TrainState:
        return grpo.init_train_state(p, f, tx, config)

    abstract = jax.eval_shape(init, params, frozen)
    shardings = grpo.state_shardings(abstract, param_shardings, frozen_shardings, mesh)
    params = jax.device_put(params, param_shardings)
    state = jax.jit(init, out_shardings=shardings, donate_argnums=(0, 1))(params, frozen)
    return state, shardings


def init_sharded(make: Callable[[], nnx.Module], mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """The module ``make()`` builds, its parameters created directly on their shardings: its graphdef and
    state, bit for bit those of an eager ``nnx.split(make())`` (the same initialisers on the same keys)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = tree_shardings(abstract, mesh)
    state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
    return graphdef, state
