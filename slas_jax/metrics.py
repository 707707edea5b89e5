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
    """Appends one JSON object per logged step to ``<run folder>/metrics.jsonl``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": step, **{k: (None if math.isnan(v) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
