"""Low-rank adapters (LoRA) on a backbone's Linear layers, and the pure functions on its parameter tree
that training needs.

:func:`attach` turns the Linear layers whose dotted paths match ``model.lora.targets`` into
:class:`LoraLinear`: the same layer (its ``kernel`` / ``bias`` keep their paths, so conversion rules,
checkpoints and exports of the base weights do not change) with two more parameters of type
``nnx.LoRAParam``, ``lora_a`` (..., in, rank) and ``lora_b`` (..., rank, out), and the output
``x W + b + (alpha / rank) (x A) B``. A is uniform in +-1 / sqrt(in) (peft's default), B is zero, so at
initialisation the model computes exactly the base model's function.

On the backbone's ``nnx.State`` (host or device arrays, or their shardings):

- :func:`split` separates the adapters (what the gradient and the optimizer see) from the base weights;
  :func:`merge` joins them again;
- :func:`switched_off` is the adapters with B = A = 0: merged with the base weights it is the base model,
  which is the KL reference, so no second copy of the base is kept.

A stacked (scanned) block stack's Linear has a leading ``layers`` axis; its adapters have it too, so the
scan hands each block its own A and B. Sharding follows the base kernel's logical axes: A takes the kernel's
input axis, B its output axis, the rank axis is replicated.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slas_jax.config import ConfigError, LoraConfig


class LoraLinear(nnx.Linear):
    """An ``nnx.Linear`` plus a low-rank update, made from an existing Linear: its variables and settings
    (so ``kernel`` / ``bias`` keep their paths) and fresh adapters with B = 0.

    lora_a: (..., in, rank), lora_b: (..., rank, out) float32 ``nnx.LoRAParam`` (``...``: a stacked block
    stack's ``layers`` axis); scale = alpha / rank.
    """

    def __init__(self, linear: nnx.Linear, *, rank: int, alpha: float, key: jax.Array):
        # Linear.__init__ would draw a new kernel: the layer's own variables and settings move over instead
        # (its Pytree bookkeeping, _pytree__*, is rebuilt by setattr).
        for name, value in vars(linear).items():
            if not name.startswith("_pytree__"):
                setattr(self, name, value)
        kernel = linear.kernel
        *lead, fan_in, fan_out = kernel.shape
        axes = kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim
        bound = fan_in**-0.5
        a = jax.random.uniform(key, (*lead, fan_in, rank), kernel.dtype, -bound, bound)
        # Logical axes only, as layers.with_axes annotates: the mesh placement comes later (parallel.py).
        self.lora_a = nnx.LoRAParam(a, out_sharding=(*axes[:-1], None), eager_sharding=False)
        self.lora_b = nnx.LoRAParam(
            jnp.zeros((*lead, rank, fan_out), kernel.dtype),
            out_sharding=(*axes[:-2], None, axes[-1]),
            eager_sharding=False,
        )
        self.scale = alpha / rank

    def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
        y = super().__call__(x, out_sharding=out_sharding)
        a, b = self.lora_a[...].astype(y.dtype), self.lora_b[...].astype(y.dtype)
        # (x A) B: the rank-r intermediate, never the (in, out) product A B.
        return y + self.scale * ((x.astype(y.dtype) @ a) @ b)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def attach(module: nnx.Module, lora: LoraConfig, field: str = "model.lora") -> list[str]:
    """Replaces, in place, every Linear layer of ``module`` whose dotted path matches one of
    ``lora.targets`` (``re.search``) by a :class:`LoraLinear`; returns the adapted paths in module order
    (none with ``lora.rank`` 0). ConfigError naming ``config.<field>.targets`` when a pattern matches no
    Linear layer."""
    if not lora.rank:
        return []
    compiled = [re.compile(p) for p in lora.targets]
    linears = [(path, m) for path, m in nnx.iter_modules(module) if type(m) is nnx.Linear and path]
    hits = [(path, m) for path, m in linears if any(c.search(_dotted(path)) for c in compiled)]
    for pattern in compiled:
        if not any(pattern.search(_dotted(path)) for path, _ in hits):
            raise ConfigError(
                f"config.{field}.targets: {pattern.pattern!r} matches no Linear layer of the backbone "
                f"(e.g. {_dotted(linears[0][0]) if linears else 'none'})"
            )
    keys = jax.random.split(jax.random.key(lora.seed), len(hits))
    for (path, linear), key in zip(hits, keys, strict=True):
        parent = module
        for part in path[:-1]:
            parent = parent[part] if isinstance(part, int) else getattr(parent, part)
        adapted = LoraLinear(linear, rank=lora.rank, alpha=lora.alpha, key=key)
        if isinstance(path[-1], int):
            parent[path[-1]] = adapted
        else:
            setattr(parent, path[-1], adapted)
    return [_dotted(path) for path, _ in hits]


def split(params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(adapters, base weights) of a backbone state (or a tree of its shardings)."""
    adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
    return adapters, base


def merge(adapters: nnx.State, base: nnx.State) -> nnx.State:
    """The backbone state from :func:`split`'s two parts."""
    return nnx.merge_state(adapters, base)


def switched_off(adapters: nnx.State) -> nnx.State:
    """The adapters zeroed: merged with the base weights, the base model's function, exactly."""
    return jax.tree.map(jnp.zeros_like, adapters)


def adapted_layers(params: nnx.State) -> dict[str, tuple[Any, Any]]:
    """{dotted path of an adapted Linear layer: (A (..., in, rank), B (..., rank, out))} of a backbone state,
    in the state's order."""
    layers: dict[str, dict[str, Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(split(params)[0]))[0]:
        *module, name = (getattr(k, "key", getattr(k, "idx", k)) for k in path)
        layers.setdefault(_dotted(tuple(module)), {})[name] = leaf
    return {module: (pair["lora_a"], pair["lora_b"]) for module, pair in layers.items()}


def has_adapters(params: nnx.State) -> bool:
    """Whether a backbone state holds LoRA adapters."""
    # Plain trees (e.g. a dict of arrays handed to export_policy) hold no adapters and cannot be split.
    return isinstance(params, nnx.State) and bool(jax.tree.leaves(split(params)[0]))
