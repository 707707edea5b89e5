"""The HTTP protocol between the "remote" reward (``slas_jax.rewards.remote``) and a reward server
(``slas_jax.rewards.serve`` is the reference; a GenEval detector or a VLM judge implements the same):

``GET {url}/info`` -> ``{"reward": name, "reads": [names]}``: the served reward and the per-sample arrays
it needs beside the prompts (the trainer checks its prompt source provides them).

``POST {url}/score``, multipart/form-data: a field ``meta`` holding JSON ``{"prompts": [n strings],
"arrays": {name: [n values]}}`` and n files ``images`` in sample order, each a PNG or JPEG (8-bit RGB) or an
``.npy`` float32 (h, w, 3) array in [0, 1] (lossless). Reply ``{"scores": [n numbers]}``, ``null`` for a
sample the reward could not score; 4xx: the request is wrong (never retried); 5xx: the server failed
(retried), ``{"error": "..."}`` saying why.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

INFO_PATH = "/info"
SCORE_PATH = "/score"
META_FIELD = "meta"
IMAGES_FIELD = "images"
ImageFormat = Literal["png", "jpeg", "npy"]
_NPY_MAGIC = b"\x93NUMPY"
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "npy": "application/octet-stream"}


def encode_image(
    image: np.ndarray, image_format: ImageFormat, jpeg_quality: int = 95
) -> tuple[str, bytes, str]:
    """image (h, w, 3) float in [0, 1] -> (file name, bytes, media type) of one ``images`` part. PNG and JPEG
    round to 8 bits (what detectors and VLM judges read); npy keeps the float32 values."""
    buffer = io.BytesIO()
    if image_format == "npy":
        np.save(buffer, np.asarray(image, np.float32), allow_pickle=False)
    else:
        pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        options = {"quality": jpeg_quality} if image_format == "jpeg" else {}
        Image.fromarray(pixels, "RGB").save(buffer, format=image_format.upper(), **options)
    return f"image.{image_format}", buffer.getvalue(), _MEDIA[image_format]


def decode_image(data: bytes) -> np.ndarray:
    """One ``images`` part -> (h, w, 3) float32 in [0, 1]; ValueError saying what is wrong with it."""
    if data.startswith(_NPY_MAGIC):
        image = np.load(io.BytesIO(data), allow_pickle=False)
        if image.ndim != 3 or image.shape[-1] != 3 or not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"an .npy image must be float (h, w, 3), got {image.dtype} {image.shape}")
        return image.astype(np.float32)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a PNG, JPEG or .npy image ({e})") from None
    return pixels.astype(np.float32) / 255.0
