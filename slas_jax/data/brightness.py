"""Prompts of the brightness smoke task: "bright <region>", with the region index the reward reads."""

from __future__ import annotations

import numpy as np

from slas_jax.data.sources import register_source
from slas_jax.rewards.brightness import REGIONS

PROMPTS = tuple(f"bright {region}" for region in REGIONS)


@register_source("brightness")
class BrightnessPrompts:
    """A deterministic, endless stream of the five brightness prompts, addressed by position."""

    vocabulary = ("bright", *REGIONS)

    def batch(self, start: int, size: int) -> tuple[list[str], dict[str, np.ndarray]]:
        """Prompts at stream positions start .. start + size - 1, and ``region`` (size,) int32 for the reward."""
        regions = np.arange(start, start + size) % len(PROMPTS)
        return [PROMPTS[r] for r in regions], {"region": regions.astype(np.int32)}
