"""The rows of a plan: the exact ones of the abstract train state and batch, and those of the compiled step."""

from __future__ import annotations

from pathlib import Path

from jax.sharding import Mesh

from slas_jax import parallel
from slas_jax.config import Config
from slas_jax.plan.rows import Row, gradient_bytes, leaf_bytes, state_rows
from slas_jax.plan.step import abstract_run, compile_step

COMPILED = "XLA CPU compile (estimate of TPU's)"


def plan_rows(
    config: Config, mesh: Mesh, workdir: Path, *, compiled: bool = True
) -> tuple[list[Row], tuple[str, ...]]:
    """The rows of ``config``'s step on ``mesh`` and the notes on where its shapes came from. Without
    ``compiled`` only the exact rows (state, batch, gradient accumulator) are given."""
    run = abstract_run(config, mesh, workdir)
    batch = sum(leaf_bytes(v, parallel.batch_sharding(mesh, v.shape)) for v in run.batch.values())
    grads = gradient_bytes(run.state, run.shardings)
    rows = [
        *state_rows(run.state, run.shardings, config),
        Row("batch", batch, "shapes x shardings (exact)"),
        Row("gradients (a temporary)", grads, "shapes x shardings (exact)"),
    ]
    if not compiled:
        return rows, (*run.notes, "activations: not compiled (--nocompile)")
    sizes = compile_step(run, mesh)
    rows += [
        Row("activations, other temporaries", max(sizes.temp - grads, 0), COMPILED),
        Row("outputs not donated (metrics)", sizes.output - sizes.alias, COMPILED),
    ]
    return rows, (*run.notes, f"XLA: arguments {sizes.argument} B, temporaries {sizes.temp} B per device")
