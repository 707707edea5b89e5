"""Run outputs at the edge: metrics as JSON lines and a one-line progress summary."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device scalars -> plain floats (NaN kept, so a diverged run is visible in the log)."""
    return {name: float(np.asarray(value)) for name, value in metrics.items()}


class MetricsWriter:
    """Appends one JSON object per logged step to ``<run folder>/metrics.jsonl``.

    A run starting at ``start_step`` (0 for a fresh run, the restored step when resuming) first drops the
    file's records of steps >= start_step: those steps are about to run again, and a fresh run in an old run
    folder must not continue the old log.
    """

    def __init__(self, path: str | Path, start_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] < start_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": step, **{k: (None if math.isnan(v) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
