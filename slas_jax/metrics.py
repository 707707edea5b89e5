"""Run outputs at the edge: each logged step's metrics fanned out by one :class:`MetricsWriter` to its
backends: JSON lines (``metrics.jsonl``, always), TensorBoard event files (tensorboardX, which needs no
TensorFlow) and Weights & Biases (the ``wandb`` extra, imported only when a run asks for it).

A backend has ``write(step, metrics)`` and ``close()``. Resuming at ``start_step`` forgets what an earlier
process logged for steps >= start_step in each backend that can (those steps run again). A JSON-lines file
whose last line a stopped process left unfinished loses that line (with a warning); any other line that is
not a JSON record stops the run with one line naming it.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slas_jax.cli import warn
from slas_jax.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_RUN_ID = "wandb_run_id"
"""The file in the run folder that keeps the W&B run's id, so that a resumed run logs into the same run."""


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device scalars -> plain floats (NaN kept, so a diverged run is visible in the log)."""
    return {name: float(np.asarray(value)) for name, value in metrics.items()}


class MetricsBackend(Protocol):
    """Where a run's scalars go."""

    def write(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class JsonLines:
    """Appends one JSON object per logged step to ``path`` (a NaN value as null; values may also be lists and
    mappings, written as they are).

    A run starting at ``start_step`` (0 for a fresh run, the restored step when resuming) first drops the
    file's records of steps >= start_step: those steps are about to run again, and a fresh run in an old run
    folder must not continue the old log.
    """

    def __init__(self, path: str | Path, start_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            records, torn = read_records(self.path)
            if torn is not None:
                warn(
                    f"dropped the unfinished last line of {self.path} ({torn[:40]!r}...), left by a stopped run"
                )
            kept = [r for r in records if r["step"] < start_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {
            "step": step,
            **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing stays open between writes."""


class TensorBoard:
    """Every metric as a TensorBoard scalar (tag = metric name) in event files under ``folder``. A resumed
    run (``start_step`` > 0) tells TensorBoard to discard the earlier events of steps >= start_step
    (``purge_step``)."""

    def __init__(self, folder: str | Path, start_step: int = 0):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=start_step or None)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """Every metric logged to the Weights & Biases run of ``project`` at its step; ``config`` (the run's
    config as JSON) becomes the W&B run config, ``folder`` holds wandb's files (``folder/wandb``) and the
    run id. A fresh run (``start_step`` 0) starts a new W&B run; a resumed one continues the same run
    (wandb keeps the steps it already has: ``resume="allow"``)."""

    def __init__(self, project: str, folder: str | Path, config: Mapping[str, Any], start_step: int = 0):
        import wandb  # the optional extra; Config.validate checked that it is installed

        folder = Path(folder)
        id_file = folder / WANDB_RUN_ID
        if start_step == 0 or not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:16])
        self.run = wandb.init(
            project=project,
            name=folder.absolute().name,
            dir=str(folder),
            config=dict(config),
            id=id_file.read_text().strip(),
            resume="allow",
        )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsWriter:
    """Fans each logged step out to ``backends``; ``close`` closes them all when the run ends. Every write
    reaches the disk (TensorBoard flushes per step) or wandb (which finishes a run that dies at exit), so a
    failed run keeps what it logged without a close."""

    def __init__(self, backends: Sequence[MetricsBackend]):
        self.backends = list(backends)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for backend in self.backends:
            backend.write(step, metrics)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def open_metrics(
    folder: str | Path,
    start_step: int = 0,
    *,
    tensorboard: bool = False,
    wandb_project: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> MetricsWriter:
    """The writer of a run folder: ``folder/metrics.jsonl``, TensorBoard events in ``folder/tensorboard``
    when ``tensorboard``, the W&B run of ``wandb_project`` (with ``config``) when set."""
    folder = Path(folder)
    backends: list[MetricsBackend] = [JsonLines(folder / METRICS_FILE, start_step)]
    if tensorboard:
        backends.append(TensorBoard(folder / TENSORBOARD_DIR, start_step))
    if wandb_project:
        backends.append(WandB(wandb_project, folder, config or {}, start_step))
    return MetricsWriter(backends)


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a JSON-lines file in order, and its last line when that one is unfinished (what a
    process stopped while appending leaves; None: none). UserError naming any other line that is not a JSON
    record with a ``step``."""
    lines = Path(path).read_text().splitlines()
    records, torn = [], None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a step")
        except ValueError as e:
            if number == len(lines):
                torn = line
                break
            raise UserError(
                f"{path} line {number} is not a JSON record ({e}); repair or delete that line"
            ) from None
        records.append(record)
    return records, torn


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl file, in order (an unfinished last line left out)."""
    return read_records(path)[0]
