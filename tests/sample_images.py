"""Test images with natural-image-like frequencies, shared by the reward parity tests."""

import numpy as np


def make_images(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """(n, h, w, 3) uint8: smooth random colour fields plus mild noise (natural-image-like frequencies)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    waves = [
        np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
        for _ in range(3 * n)
    ]
    smooth = 0.5 + 0.35 * np.stack(waves).reshape(n, 3, h, w).transpose(0, 2, 3, 1)
    return np.clip(255 * (smooth + 0.03 * rng.standard_normal(smooth.shape)), 0, 255).round().astype(np.uint8)
