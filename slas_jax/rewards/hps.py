"""HPS-v2.1 ("hps_v2", Wu et al. 2023): open_clip's ViT-H-14 fine-tuned on human preferences, scored as HPSv2's
``img_score.py`` does: the cosine of the L2-normalised image and text features, without the logit scale.

Folders. The reward reads a folder converted once by ``python -m slas_jax.convert SRC OUT`` (torch is needed
for that step only, to read the PyTorch files). SRC holds, as published on the Hugging Face Hub:

- from laion/CLIP-ViT-H-14-laion2B-s32B-b79K: ``open_clip_config.json`` (the architecture, its
  ``model_cfg``), ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (the base weights),
  ``vocab.json`` and ``merges.txt`` (the BPE tokenizer);
- from xswu/HPSv2: ``HPS_v2.1_compressed.pt``, whose ``state_dict`` entry (the whole CLIP model by open_clip
  names) replaces the base weights, as HPSv2 loads it over the pretrained model.

OUT (``config.reward.options.checkpoint``) then holds ``open_clip_config.json``, ``vocab.json``,
``merges.txt``, ``state/`` (the CLIPModel's ``nnx.State``, Orbax) and the marker ``slas_jax_converted.json``.

Scoring path (HPSv2's evaluation transform, open_clip's tokenizer): prompts are tokenised on the host by
:attr:`Reward.prepare` (open_clip's layout: start 49406, BPE, end 49407, zeros to 77; batch key
``reward_tokens``); images (b, h, w, 3) in [0, 1] are preprocessed in JAX inside the jitted step by
:class:`HPSImageProcessing`. By default the float images themselves are scored; the option ``jpeg_quality``
scores them as DanceGRPO's SD script does (uint8, PIL resize to 512 x 512, a ``.jpg`` saved at that quality and
read back), reproduced in integer JAX maths by :mod:`slas_jax.rewards.jpeg` inside the jitted step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.config import ConfigError
from slas_jax.models import conversion
from slas_jax.models.clip import CLIPModel
from slas_jax.models.conversion import ConversionError
from slas_jax.models.open_clip import make_clip_model
from slas_jax.models.open_clip_tokenizer import OpenCLIPTokenizer
from slas_jax.pipelines.components import FORMAT_VERSION, MARKER, STATE_DIR, restore_module
from slas_jax.rewards.clip_score import TOKENS_KEY
from slas_jax.rewards.jpeg import dance_grpo_jpeg
from slas_jax.rewards.registry import Reward, register
from slas_jax.tokenizers import Tokenize

CONFIG_FILE = "open_clip_config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
BASE_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""The base checkpoint's file names, either one (the safetensors one is read first)."""
HPS_WEIGHTS = "HPS_v2.1_compressed.pt"
KIND = "hps_v2"
"""The marker's ``reward`` entry."""
SOURCE_FILES = (
    f"{CONFIG_FILE}, {BASE_WEIGHTS[0]} (or {BASE_WEIGHTS[1]}), {' and '.join(TOKENIZER_FILES)} of "
    f"laion/CLIP-ViT-H-14-laion2B-s32B-b79K and {HPS_WEIGHTS} of xswu/HPSv2 (both on the Hugging Face Hub)"
)
"""What the converter's source folder holds and where each file is published (named in errors)."""
EXPECTED = f"a folder converted by python -m slas_jax.convert SRC OUT, SRC holding {SOURCE_FILES}"

# OpenAI CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / _STD), which HPSv2's transform uses.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, kw_only=True)
class HPSImageProcessing:
    """HPSv2's evaluation transform on float images, in JAX: open_clip's ``ResizeMaxSize`` (the longer side to
    ``size``, bicubic with antialiasing, the shorter one ``round(side * size / longer)``), zero padding centred
    to ``size`` x ``size`` (the odd pixel at the bottom / right), then normalisation; no centre crop.

    The reference resizes the float tensor from ``ToTensor`` with torchvision (bicubic, antialias, no
    clipping); ``jax.image.resize(..., "cubic", antialias=True)`` computes the same separable kernel (measured
    within 1e-6 of it). One departure: the reference neither resizes nor pads an image whose longer side
    already has ``size`` pixels, which leaves a non-square image that its model then refuses; here it is
    padded.
    """

    size: int = 224
    """Side of the square model input in pixels (the vision tower's image_size)."""
    fill: float = 0.0
    """Value of the padding, in [0, 1] image units (HPSv2: 0, padded before normalisation)."""
    mean: tuple[float, ...] = OPENAI_MEAN
    """Per-channel mean subtracted after padding."""
    std: tuple[float, ...] = OPENAI_STD
    """Per-channel standard deviation divided by after padding."""

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize (static): Python's round, as ResizeMaxSize."""
        scale = self.size / float(max(height, width))
        return round(height * scale), round(width * scale)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: (b, h, w, 3) float in [0, 1] -> pixel values (b, size, size, 3) float32 (NHWC)."""
        images = images.astype(jnp.float32)
        b, h, w, c = images.shape
        new_h, new_w = self.resized_shape(h, w)
        if (new_h, new_w) != (h, w):
            images = jax.image.resize(images, (b, new_h, new_w, c), "cubic", antialias=True)
        pad_h, pad_w = self.size - new_h, self.size - new_w
        images = jnp.pad(
            images,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
            constant_values=self.fill,
        )
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        return (images - mean) / std


def check_hps_folder(checkpoint: str | Path | None) -> Path:
    """The converted folder as a Path, or a one-line ConfigError / ConversionError naming what is missing,
    how to convert and where the files are published."""
    if not checkpoint:
        raise ConfigError(f"config.reward.options.checkpoint: set it to {EXPECTED}")
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise ConversionError(f"HPS-v2.1 folder {folder} does not exist; expected {EXPECTED}")
    if not (folder / MARKER).is_file():
        raise ConversionError(
            f"HPS-v2.1 folder {folder} is not a converted folder (no {MARKER}); expected {EXPECTED}"
        )
    missing = [name for name in (CONFIG_FILE, *TOKENIZER_FILES, STATE_DIR) if not (folder / name).exists()]
    if missing:
        raise ConversionError(
            f"HPS-v2.1 folder {folder} lacks {', '.join(missing)}; re-run python -m slas_jax.convert on its "
            "source folder"
        )
    marker = conversion.read_config(folder, MARKER)
    if marker.get("reward") != KIND or marker.get("format_version") != FORMAT_VERSION:
        raise ConversionError(
            f"{folder / MARKER} is not an {KIND} conversion of format {FORMAT_VERSION} (it reads "
            f"{marker.get('reward') or marker.get('pipeline')!r}, format {marker.get('format_version')!r}); "
            f"expected {EXPECTED}"
        )
    return folder


def read_model_config(folder: Path) -> dict[str, Any]:
    """The ``model_cfg`` of ``folder``/open_clip_config.json (open_clip's hub layout)."""
    model_cfg = conversion.read_config(folder, CONFIG_FILE).get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise ConversionError(f"{folder / CONFIG_FILE} has no model_cfg object; re-download it")
    return model_cfg


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@register("hps_v2")
def hps_reward(
    checkpoint: str | None = None, dtype: str = "float32", jpeg_quality: int | None = None
) -> Reward:
    """HPS-v2.1: cosine(image, text) of the converted HPS folder ``checkpoint``; dtype: compute dtype of the
    CLIP towers (parameters and scores stay float32). The batch must hold ``reward_tokens`` (b, 77) int32,
    which :attr:`Reward.prepare` produces from the prompts.

    jpeg_quality: None (the default) scores the images as they are. An integer in [1, 100] takes DanceGRPO's
    scoring path (fastvideo/train_grpo_sd.py, which saves at PIL's default quality, 75) before HPSv2's
    transform: ``(image * 255).astype(np.uint8)``, ``resize((512, 512))`` (bicubic), a JPEG saved at this
    quality (4:2:0) and read back, as :func:`slas_jax.rewards.jpeg.dance_grpo_jpeg` computes it in JAX
    (integer maths: the scores are not differentiable with respect to the images).
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.reward.options.dtype: must be 'float32' or 'bfloat16', got {dtype!r}")
    if jpeg_quality is not None and (
        isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100
    ):
        raise ConfigError(
            f"config.reward.options.jpeg_quality: must be an integer in [1, 100] or None, got {jpeg_quality!r}"
        )
    folder = check_hps_folder(checkpoint)
    model_cfg = read_model_config(folder)
    model = restore_module(
        lambda: make_clip_model(model_cfg, dtype=jnp.dtype(dtype)),
        folder / STATE_DIR,
        what=f"HPS-v2.1 folder {folder}",
    )
    tokenize = OpenCLIPTokenizer.from_folder(folder, model.text_config.max_position_embeddings)
    return hps_scorer(model, tokenize, jpeg_quality)


def hps_scorer(model: CLIPModel, tokenize: Tokenize, jpeg_quality: int | None = None) -> Reward:
    """The HPS-v2.1 Reward of an open_clip ``model`` (concrete, or abstract from ``nnx.eval_shape`` for
    planning) and its ``tokenize`` (prompts -> (n, 77) int32); ``jpeg_quality`` as in :func:`hps_reward`."""
    processing = HPSImageProcessing(size=model.vision_config.image_size)
    graphdef, params = nnx.split(model)

    def fn(params: nnx.State, images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        """images (b, h, w, 3) float32 in [0, 1], batch[reward_tokens] (b, 77) int32 -> scores (b,) float32."""
        clip = nnx.merge(graphdef, params)
        if jpeg_quality is not None:
            images = dance_grpo_jpeg(images, jpeg_quality)
        image = _unit(clip.get_image_features(processing(images)))
        # Zero padding after the end token needs no mask: the causal mask hides it from the pooled end token.
        text = _unit(clip.get_text_features(batch[TOKENS_KEY]))
        return jnp.sum(image * text, axis=-1)

    def prepare(prompts: Sequence[str]) -> dict[str, np.ndarray]:
        return {TOKENS_KEY: tokenize(prompts)}

    return Reward(fn=fn, params=params, prepare=prepare)
