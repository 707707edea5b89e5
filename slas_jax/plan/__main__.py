"""Memory plan of a run: ``python -m slas_jax.plan --config configs/X.py (--devices N | --mesh D,F,T)
[--hbm_gib G] [--config.section.key=value ...]``.

Prints the per-device bytes of one GRPO step on that mesh, row by row: the backbone's parameters (trained
and not, as the optimizer's trainable mask says), the optimizer state, the KL reference, each frozen model
(in ``model.frozen_dtype``, sharded like the backbone), the batch, the gradient accumulator, and the
activations and other temporaries. Nothing is allocated and no weights are read: the state rows are exact
(shapes from ``nnx.eval_shape`` times their shardings), the temporaries come from XLA's memory analysis of
the step compiled ahead of time from abstract inputs on N virtual CPU devices, an estimate of what TPU's
compiler assigns (``--nocompile`` skips it and prints the exact rows alone).

With ``--hbm_gib G`` the exit code says whether the total fits G GiB per device: 0 if it does, 2 with one
line naming the overflow if not (what tpu_scripts' preflight checks). Errors: one line, exit 2.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from absl import flags

from slas_jax.cli import Command, Parsed
from slas_jax.config import describe_config, load_config
from slas_jax.errors import ConfigError


def _define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_integer(
        "devices",
        None,
        "Devices (chips) of the slice; the mesh is config.mesh over them.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "mesh",
        None,
        "data,fsdp,tensor sizes (e.g. 1,32,1), overriding config.mesh; devices = their product.",
        flag_values=values,
    )
    flags.DEFINE_float(
        "hbm_gib", None, "Device memory in GiB: exit 2 unless the plan fits it.", flag_values=values
    )
    flags.DEFINE_bool(
        "compile",
        True,
        "Compile the step for its temporaries (else the exact rows only).",
        flag_values=values,
    )


COMMAND = Command(
    "plan", __doc__, config_hint="configs/<name>.py", define_flags=_define_flags, config_help=describe_config
)


def mesh_sizes(
    mesh: str | None, devices: int | None, config_mesh: tuple[int, int, int]
) -> tuple[int, int, int, int]:
    """(devices, data, fsdp, tensor) from ``--mesh`` / ``--devices`` and config.mesh (data -1: the rest)."""
    if mesh is not None:
        try:
            data, fsdp, tensor = (int(v) for v in mesh.split(","))
        except ValueError:
            raise ConfigError(f"--mesh: expected three integers data,fsdp,tensor, got {mesh!r}") from None
        if min(data, fsdp, tensor) < 1:
            raise ConfigError(f"--mesh: sizes must be >= 1, got {mesh!r}")
        if devices is not None and devices != data * fsdp * tensor:
            raise ConfigError(f"--mesh {mesh} needs {data * fsdp * tensor} devices, --devices says {devices}")
        return data * fsdp * tensor, data, fsdp, tensor
    if devices is None or devices < 1:
        raise ConfigError("pass --devices N (the slice's chips) or --mesh data,fsdp,tensor")
    data, fsdp, tensor = config_mesh
    if devices % (fsdp * tensor):
        raise ConfigError(f"config.mesh: fsdp={fsdp} x tensor={tensor} does not divide --devices {devices}")
    return devices, devices // (fsdp * tensor) if data == -1 else data, fsdp, tensor


def _cpu_devices(count: int) -> list:
    """``count`` devices to compile for: this process's CPU backend set to that many virtual devices (before
    any JAX computation), or the first ``count`` already there (a caller that started JAX, e.g. a test)."""
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        pass  # the backend already started
    devices = jax.devices()
    if len(devices) < count:
        from slas_jax.plan.step import PlanError

        raise PlanError(
            f"this process already started JAX with {len(devices)} devices; run python -m slas_jax.plan in a "
            f"fresh process to plan {count}"
        )
    return devices[:count]


def plan_command(parsed: Parsed) -> str:
    """Config + mesh -> the table on stdout; the summary line, or PlanError when --hbm_gib is exceeded."""
    config = load_config(parsed.config)
    f = parsed.flags
    count, data, fsdp, tensor = mesh_sizes(
        f["mesh"].value, f["devices"].value, (config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    )
    devices = _cpu_devices(count)
    from slas_jax import parallel
    from slas_jax.plan.report import plan_rows
    from slas_jax.plan.rows import GIB, format_table, total
    from slas_jax.plan.step import PlanError

    mesh = parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor, devices=devices)
    with tempfile.TemporaryDirectory() as workdir:
        rows, notes = plan_rows(config, mesh, Path(workdir), compiled=f["compile"].value)
    header = "\n".join(
        [
            f"plan: {f['config'].config_filename} on {count} devices, "
            f"mesh data={data} fsdp={fsdp} tensor={tensor}",
            *(f"  {n}" for n in notes),
        ]
    )
    print(format_table(rows, header))
    per_device = total(rows) / GIB
    hbm = f["hbm_gib"].value
    if hbm is not None and per_device > hbm:
        largest = max(rows, key=lambda r: r.bytes)
        raise PlanError(
            f"the plan needs {per_device:.2f} GiB per device, more than --hbm_gib {hbm:g} (largest row: "
            f"{largest.name}, {largest.bytes / GIB:.2f} GiB); use more devices or a larger mesh.fsdp, "
            "model.frozen_dtype=bfloat16, or fewer samples per micro-batch"
        )
    fits = "" if hbm is None else f", fits {hbm:g} GiB"
    return f"total {per_device:.2f} GiB per device{fits}"


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(plan_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
