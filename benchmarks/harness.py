"""Side-by-side timing: each side (slas-jax, PyTorch) lives in its own worker process, and the parent runs their
stages interleaved (A, B, A, B, ...), so that both sides see the same machine load, and keeps the best of N
runs after warm-up.

A worker imports a side module by name and calls its ``build(spec) -> Side``. A Side has

- ``stages``: name -> function running that stage once, returning when its results are computed
  (``block_until_ready`` / synchronised);
- ``compile() -> dict``: compile seconds per stage, before any run (JAX: ``lower(...).compile()``, timed
  apart from the first run; PyTorch compiles nothing);
- ``info() -> dict``: FLOPs per stage, parameter counts, dtype, the measured matmul peak, anything else the
  table reports.

Peak host memory is the worker's ``ru_maxrss`` (peak resident set of that process over its whole life:
framework, model, compiler, optimizer state, activations), read after its last stage, so that each side's
peak is its own. ``rss_after_setup_mb`` is its resident set once the model is built, before the first
compile or run.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from typing import Any, Protocol


class Side(Protocol):
    stages: Mapping[str, Callable[[], None]]

    def compile(self) -> dict[str, float]: ...

    def info(self) -> dict[str, Any]: ...


def threads() -> int:
    """The cores this process may run on: what XLA:CPU sizes its thread pool by, and what torch is set to."""
    return len(os.sched_getaffinity(0))


def peak_rss_mb() -> float:
    """This process's peak resident set so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident set now, MiB (Linux: /proc/self/statm's resident pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _serve(module: str, spec: dict[str, Any], conn: Connection) -> None:
    """The worker loop: build the side, then answer ("stages",), ("compile",), ("run", stage), ("info",) until
    ("close",).
    An exception is sent back as its text, so that the parent fails with the worker's message."""
    try:
        side = importlib.import_module(module).build(spec)
        conn.send(("ok", {"rss_after_setup_mb": rss_mb()}))
        while True:
            command, *args = conn.recv()
            if command == "close":
                return
            if command == "compile":
                reply = side.compile()
            elif command == "stages":
                reply = list(side.stages)
            elif command == "run":
                start = time.perf_counter()
                side.stages[args[0]]()
                reply = time.perf_counter() - start
            else:
                reply = {**side.info(), "peak_rss_mb": peak_rss_mb()}
            conn.send(("ok", reply))
    except Exception as e:  # reported to the parent, which raises it
        import traceback

        conn.send(("error", f"{module}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))


class Worker:
    """One side in its own (spawned) process: ``module.build(spec)`` runs at start."""

    def __init__(self, label: str, module: str, spec: dict[str, Any]):
        self.label = label
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(module, spec, child), daemon=True
        )
        self._process.start()
        self.setup = self._reply()

    def _reply(self) -> Any:
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def call(self, *command: Any) -> Any:
        self._conn.send(command)
        return self._reply()

    def stages(self) -> tuple[str, ...]:
        return tuple(self.call("stages"))

    def close(self) -> None:
        self._conn.send(("close",))
        self._process.join(timeout=60)


@dataclass
class Timings:
    """Seconds of every run, by side label and stage: ``runs`` the measured ones, ``warmup`` the others,
    ``first`` each stage's first run (after compilation), warm-up or not."""

    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    warmup: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    first: dict[str, dict[str, float]] = field(default_factory=dict)
    load_average: list[tuple[float, float, float]] = field(default_factory=list)
    """The machine's 1 / 5 / 15-minute load averages at the start of each round."""

    def add(self, label: str, stage: str, seconds: float, *, kept: bool = True) -> None:
        (self.runs if kept else self.warmup).setdefault(label, {}).setdefault(stage, []).append(seconds)
        self.first.setdefault(label, {}).setdefault(stage, seconds)

    def best(self, label: str, stage: str) -> float | None:
        runs = self.runs.get(label, {}).get(stage)
        return min(runs) if runs else None


def interleave(
    workers: Sequence[Worker],
    stages: Sequence[str],
    *,
    repeats: int,
    warmup: int,
    log: Callable[[str], None] = print,
) -> Timings:
    """Runs every stage on every worker that has it, ``warmup + repeats`` rounds: within a round, stage by
    stage, the workers one after the other (A, B, A, B, ...). Warm-up rounds are not kept."""
    timings = Timings()
    offered = {w.label: set(w.stages()) for w in workers}
    for round_index in range(warmup + repeats):
        kept = round_index >= warmup
        timings.load_average.append(os.getloadavg())
        log(f"round {round_index}: load average {timings.load_average[-1][0]:.2f}")
        for stage in stages:
            for worker in workers:
                if stage not in offered[worker.label]:
                    continue
                seconds = worker.call("run", stage)
                log(
                    f"  round {round_index}{'' if kept else ' (warm-up)'}: {worker.label} {stage} {seconds:.3f} s"
                )
                timings.add(worker.label, stage, seconds, kept=kept)
    return timings


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine, software versions and date a result was measured on."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores_usable": threads(),
        "cores_total": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {
            p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "diffusers", "transformers")
        },
    }


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats printed with 3 significant digits, None as a dash."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
