"""The preflight of a launch on a Cloud TPU slice, run on the launching machine (``launch.sh`` runs it first,
``preflight.sh`` alone): the training arguments, parsed as the trainer parses them, against the slice.

    python tpu_scripts/preflight.py --accelerator v4-32 -- --config configs/sd_tpu.py [--config.a.b=v ...]

It refuses, with one line and exit code 2: an accelerator type it does not know; a command line the
trainer's flags refuse (an unknown flag or config key, a value of the wrong type); a mesh that does not fit
the slice's devices; a batch that does not split over the data x fsdp devices (the trainer would then
replicate it, every device computing all of it); and a memory plan that does not fit one chip's HBM, as the
planner judges it: ``python -m slas_jax.plan --config C --devices N --hbm_gib G [--config.a.b=v ...]``
(exit 0: it fits; 2 and one line: what overflows), or the command in ``$SLAS_JAX_PLANNER`` with the same
arguments. The config's own validation (registries, checkpoints) is left to the planner and the trainer: it
imports the models, which would make this check slow.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

PLANNER_ENV = "SLAS_JAX_PLANNER"


@dataclass(frozen=True)
class Family:
    """A TPU generation: how its accelerator types count and what one JAX device holds."""

    cores_per_device: int
    """The type's number counts TensorCores (v4, v5p: two per chip, one JAX device per chip) or chips."""
    hbm_gib: int
    """HBM per chip (Cloud TPU's system architecture pages)."""


FAMILIES = {
    "v4": Family(cores_per_device=2, hbm_gib=32),
    "v5p": Family(cores_per_device=2, hbm_gib=95),
    "v5litepod": Family(cores_per_device=1, hbm_gib=16),
    "v6e": Family(cores_per_device=1, hbm_gib=32),
}


class PreflightError(Exception):
    """A refusal: its message is the one line the user sees."""


@dataclass(frozen=True)
class Slice:
    accelerator: str
    devices: int
    hbm_gib: int


def parse_accelerator(accelerator: str) -> Slice:
    """``v4-32`` -> 16 devices of 32 GiB; ``v5litepod-16`` -> 16 of 16 GiB."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator)
    family = FAMILIES.get(match.group(1)) if match else None
    if family is None:
        raise PreflightError(
            f"unknown accelerator type {accelerator!r}: the preflight knows "
            f"{', '.join(f'{name}-N' for name in FAMILIES)} (or launch with --skip-preflight)"
        )
    cores = int(match.group(2))
    if cores < family.cores_per_device or cores % family.cores_per_device:
        raise PreflightError(f"accelerator type {accelerator!r}: {cores} is not a whole number of chips")
    return Slice(accelerator, cores // family.cores_per_device, family.hbm_gib)


def load_train_config(train_args: Sequence[str]):
    """The Config of ``python -m slas_jax.train TRAIN_ARGS``, parsed by the trainer's own flags (typed, not
    validated beyond the sections it reads: see the module docstring)."""
    try:
        from slas_jax.cli import Command, define_multihost_flags, one_line
        from slas_jax.config import Config, from_mapping
        from slas_jax.errors import UserError
    except ImportError as e:
        raise PreflightError(
            f"the preflight needs slas-jax on this machine ({e}): pip install -e . (or --skip-preflight)"
        ) from e
    command = Command("train", "", config_hint="configs/<name>.py", define_flags=define_multihost_flags)
    try:
        config = from_mapping(Config, command.parse(["train", *train_args]).config)
        config.mesh.validate("mesh")  # the sections this check reads: their checks are cheap
        config.train.validate("train")
        return config
    except (UserError, FileNotFoundError) as e:
        raise PreflightError(one_line(e)) from e


def check_slice(config, slice_: Slice) -> str:
    """Refuses a mesh or batch that does not split over the slice; returns a line describing the split."""
    mesh, train = config.mesh, config.train
    n = slice_.devices
    where = f"{slice_.accelerator} has {n} devices"
    model = mesh.fsdp * mesh.tensor
    if n % model:
        raise PreflightError(
            f"{where}: config.mesh fsdp {mesh.fsdp} x tensor {mesh.tensor} does not divide them"
        )
    data = n // model if mesh.data == -1 else mesh.data
    if data * model != n:
        raise PreflightError(
            f"{where}: config.mesh data {mesh.data} x fsdp {mesh.fsdp} x tensor {mesh.tensor} = {data * model} "
            "does not use them all; set mesh.data=-1"
        )
    shards = data * mesh.fsdp
    # The batch axes: the prompts of a rollout (one host-reward chunk; their samples follow them) and each
    # micro-batch the update re-scores. Each splits over data x fsdp, or stays whole on every device.
    prompts = train.prompts_per_step // max(config.reward.host_chunks, 1)
    batches = [
        (prompts, f"{prompts} prompts per rollout (train.prompts_per_step / reward.host_chunks)"),
        (train.micro_batch_size, f"micro-batches of {train.micro_batch_size} (train.micro_batch_size)"),
    ]
    for size, what in batches:
        if size % shards:
            raise PreflightError(
                f"{where} (mesh data {data} x fsdp {mesh.fsdp} x tensor {mesh.tensor}): {what} do not split "
                f"over data x fsdp = {shards} devices; make it a multiple of {shards}"
            )
    return (
        f"preflight: {slice_.accelerator}: {n} devices of {slice_.hbm_gib} GiB, mesh data {data} x fsdp "
        f"{mesh.fsdp} x tensor {mesh.tensor}; {prompts} prompts per rollout, micro-batches of "
        f"{train.micro_batch_size}: {train.micro_batch_size // shards} samples per device"
    )


def config_args(train_args: Sequence[str]) -> list[str]:
    """The ``--config`` file and ``--config.a.b`` overrides of TRAIN_ARGS (the planner takes no other flag)."""
    picked, args = [], list(train_args)
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name == "--config" or name.startswith("--config."):
            picked.append(arg)
            takes_next = "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--")
            if takes_next:
                picked.append(args[i + 1])
    return picked


def planner_command() -> list[str]:
    """``$SLAS_JAX_PLANNER`` (words), or this interpreter's ``-m slas_jax.plan``."""
    given = os.environ.get(PLANNER_ENV, "").strip()
    return shlex.split(given) if given else [sys.executable, "-m", "slas_jax.plan"]


def run_planner(train_args: Sequence[str], slice_: Slice) -> None:
    command = [
        *planner_command(),
        *config_args(train_args),
        "--devices",
        str(slice_.devices),
        "--hbm_gib",
        str(slice_.hbm_gib),
    ]
    print("+ " + shlex.join(command), flush=True)
    if not os.environ.get(PLANNER_ENV, "").strip() and importlib.util.find_spec("slas_jax.plan") is None:
        raise PreflightError(
            "the memory planner slas_jax.plan is not in this slas-jax; update it (or --skip-preflight)"
        )
    code = subprocess.run(command, check=False).returncode
    if code == 2:
        raise SystemExit(2)  # the planner has said what overflows, on its one line
    if code:
        raise PreflightError(f"the memory planner failed (exit code {code}): {shlex.join(command)}")


def _one_line_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tpu_scripts/preflight.py",
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --accelerator TYPE -- TRAIN_ARGS",
    )
    parser.error = _one_line_error
    parser.add_argument("--accelerator", required=True, help="the slice's accelerator type, e.g. v4-32")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    options, train_args = parser.parse_args(argv[:split]), argv[split + 1 :]
    try:
        if not train_args:
            raise PreflightError("pass the training arguments after --, e.g. -- --config configs/sd_tpu.py")
        slice_ = parse_accelerator(options.accelerator)
        print(check_slice(load_train_config(train_args), slice_), flush=True)
        run_planner(train_args, slice_)
    except PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"preflight: ok, the config fits {slice_.accelerator}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
