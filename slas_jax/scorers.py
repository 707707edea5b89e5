"""Host ground-truth scorers by name (``eval.scorer``): they judge samples independently of the training
reward, which is how reward hacking shows (the reward climbs while the truth does not)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from slas_jax.registry import Registry


@dataclass(frozen=True)
class Scorer:
    """fn(images (n, h, w, 3) float32 in [0, 1], arrays with leading axis n) -> {"strict": (n,), "partial":
    (n,)} float32; reads: the arrays ``fn`` needs from the prompt source."""

    fn: Callable[[np.ndarray, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    reads: tuple[str, ...] = ()


SCORERS: Registry[Scorer] = Registry("scorer", "eval.scorer")
