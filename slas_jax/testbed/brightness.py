"""The brightness smoke task: prompts "bright <region>" and a programmatic reward, the mean luminance of
the region a prompt names, in [0, 1]: a signal a randomly initialised model climbs within minutes
(``configs/brightness_cpu.py``)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.data.sources import register_source
from slas_jax.rewards.registry import Reward, register

REGIONS = ("top", "bottom", "left", "right", "centre")
PROMPTS = tuple(f"bright {region}" for region in REGIONS)


def region_masks(height: int, width: int) -> jax.Array:
    """(len(REGIONS), h, w) float32 masks for top / bottom / left / right halves and the centre quarter."""
    rows = jnp.arange(height)[:, None] * jnp.ones((1, width))
    cols = jnp.ones((height, 1)) * jnp.arange(width)[None, :]
    top = rows < height / 2
    left = cols < width / 2
    centre = (jnp.abs(rows - (height - 1) / 2) < height / 4) & (jnp.abs(cols - (width - 1) / 2) < width / 4)
    return jnp.stack([top, ~top, left, ~left, centre]).astype(jnp.float32)


def region_brightness(images: jax.Array, region: jax.Array) -> jax.Array:
    """images: (b, h, w, 3) float32 in [0, 1]; region: (b,) int. Returns (b,) float32 in [0, 1]."""
    luminance = images @ jnp.array([0.299, 0.587, 0.114], images.dtype)
    masks = region_masks(*luminance.shape[1:])[region]
    return jnp.sum(luminance * masks, axis=(1, 2)) / jnp.sum(masks, axis=(1, 2))


@register("brightness")
def brightness_reward() -> Reward:
    """Region brightness; reads ``region`` (b,) int from the batch."""

    def fn(_params: None, images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return region_brightness(images, batch["region"])

    return Reward(fn=fn, reads=("region",))


@register_source("brightness")
class BrightnessPrompts:
    """A deterministic, endless stream of the five brightness prompts, addressed by position."""

    vocabulary = ("bright", *REGIONS)
    arrays = ("region",)

    def batch(self, start: int, size: int) -> tuple[list[str], dict[str, np.ndarray]]:
        """Prompts at stream positions start .. start + size - 1, and ``region`` (size,) int32 for the reward."""
        regions = np.arange(start, start + size) % len(PROMPTS)
        return [PROMPTS[r] for r in regions], {"region": regions.astype(np.int32)}
