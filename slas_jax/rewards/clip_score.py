"""CLIP-family rewards from a local transformers ``CLIPModel`` folder: "pickscore" and "clip_score".

PickScore (Kirstain et al. 2023) is a CLIP ViT-H/14 fine-tuned on human preferences; its score is
``exp(logit_scale) * cosine(text_embeds, image_embeds)``, exactly as the PickScore repository computes it.
"clip_score" is the plain cosine of any CLIPModel (e.g. openai/clip-vit-large-patch14).

The folder holds config.json + *.safetensors (the CLIPModel), the tokenizer files (vocab.json + merges.txt, or
tokenizer.json) and preprocessor_config.json (CLIPImageProcessor settings). Prompts are tokenised on the host
through :attr:`Reward.prepare` (batch key ``reward_tokens``); images are preprocessed in JAX inside the
jitted step by :class:`CLIPImageProcessing`, which mirrors CLIPImageProcessor on float images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.config import ConfigError
from slas_jax.models.clip import load_clip_model
from slas_jax.models.conversion import ConversionError
from slas_jax.rewards.registry import Reward, register
from slas_jax.tokenizers import load_hf_tokenizer

TOKENS_KEY = "reward_tokens"
PICKSCORE_PUBLISHED = (
    "PickScore_v1 is published as yuvalkirstain/PickScore_v1 on the Hugging Face Hub, with its tokenizer and "
    "preprocessor_config.json taken from laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
)
CLIP_PUBLISHED = "e.g. openai/clip-vit-large-patch14 on the Hugging Face Hub"

# PIL resampling codes (preprocessor_config.json "resample") -> jax.image.resize methods with the same kernel;
# with antialias=True jax widens the kernel when downsampling, as PIL does.
_RESAMPLE = {1: "lanczos3", 2: "linear", 3: "cubic"}


def _edge_pair(value: Any, what: str) -> tuple[int, int]:
    """CLIPImageProcessor's int or {"height", "width"} size -> (height, width)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise ConversionError(f"preprocessor_config.json: unsupported {what} {value!r}")


@dataclass(frozen=True, kw_only=True)
class CLIPImageProcessing:
    """transformers' CLIPImageProcessor on float images, in JAX: resize -> center crop -> rescale -> normalise.

    shortest_edge: resize so the shorter side has this length, the longer one ``int(edge * long / short)``
    (transformers' rounding); resize_to: instead, an exact (height, width); neither: no resize. crop: (height,
    width) of the center crop (top / left offsets floored, as transformers) or None. method: jax.image.resize
    method matching the processor's PIL filter. scale: multiplies images in [0, 1] into the processor's
    rescaled units (255 * rescale_factor, i.e. 1 for the usual 1/255). mean / std: per-channel normalisation.

    Unlike the processor, images are not quantised to 8 bits before resizing (PIL resizes uint8 images), so
    pixels differ by up to about half a grey level plus the two filters' rounding.
    """

    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    method: str = "cubic"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @classmethod
    def from_file(cls, path: str | Path) -> CLIPImageProcessing:
        """Reads a preprocessor_config.json written by CLIPImageProcessor (old int or new dict sizes)."""
        raw = json.loads(Path(path).read_text())
        resample = raw.get("resample", 3)
        if resample not in _RESAMPLE:
            raise ConversionError(
                f"{path}: resample={resample} is not supported (one of {sorted(_RESAMPLE)}: PIL lanczos, "
                "bilinear, bicubic)"
            )
        shortest_edge = resize_to = None
        if raw.get("do_resize", True):
            size = raw.get("size", 224)
            if isinstance(size, int):
                shortest_edge = size  # CLIPImageProcessor reads an int size as the shortest edge
            elif isinstance(size, Mapping) and "shortest_edge" in size:
                shortest_edge = int(size["shortest_edge"])
            else:
                resize_to = _edge_pair(size, "size")
        crop = _edge_pair(raw.get("crop_size", 224), "crop_size") if raw.get("do_center_crop", True) else None
        scale = 255.0 * raw.get("rescale_factor", 1 / 255) if raw.get("do_rescale", True) else 255.0
        normalise = raw.get("do_normalize", True)
        return cls(
            shortest_edge=shortest_edge,
            resize_to=resize_to,
            crop=crop,
            method=_RESAMPLE[resample],
            scale=float(scale),
            mean=tuple(raw.get("image_mean", (0.0, 0.0, 0.0))) if normalise else (0.0, 0.0, 0.0),
            std=tuple(raw.get("image_std", (1.0, 1.0, 1.0))) if normalise else (1.0, 1.0, 1.0),
        )

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step (static: shapes are known at trace time)."""
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is None:
            return height, width
        short, long = min(height, width), max(height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: (b, h, w, 3) float in [0, 1] -> pixel values (b, crop_h, crop_w, 3) float32 (NHWC)."""
        images = images.astype(jnp.float32)
        b, h, w, c = images.shape
        new_h, new_w = self.resized_shape(h, w)
        if (new_h, new_w) != (h, w):
            images = jax.image.resize(images, (b, new_h, new_w, c), self.method, antialias=True)
            # PIL stores its result in 8 bits, which clips the cubic / lanczos overshoot at edges.
            images = jnp.clip(images, 0.0, 1.0)
        if self.crop is not None:
            crop_h, crop_w = self.crop
            if crop_h > new_h or crop_w > new_w:
                raise ValueError(
                    f"images resized to {new_h}x{new_w} are smaller than the {crop_h}x{crop_w} crop"
                )
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
            images = images[:, top : top + crop_h, left : left + crop_w]
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        return (images * self.scale - mean) / std


def check_clip_folder(checkpoint: str | Path | None, what: str, published: str) -> Path:
    """The folder as a Path, or a one-line ConfigError / ConversionError naming what is missing and where such
    a folder is published."""
    expected = (
        "a transformers CLIPModel folder with config.json, *.safetensors, tokenizer files (vocab.json + "
        "merges.txt, or tokenizer.json) and preprocessor_config.json"
    )
    if not checkpoint:
        raise ConfigError(f"config.reward.options.checkpoint: set it to {expected} — {published}")
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise ConversionError(f"{what} folder {folder} does not exist; expected {expected} — {published}")
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_bpe or (folder / "tokenizer.json").is_file()):
        missing.append("vocab.json + merges.txt (or tokenizer.json)")
    if missing:
        raise ConversionError(
            f"{what} folder {folder} lacks {', '.join(missing)}; expected {expected} — {published}"
        )
    return folder


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def clip_reward(
    checkpoint: str | Path | None, *, scaled: bool, what: str, published: str, dtype: str = "float32"
) -> Reward:
    """A Reward scoring images against their prompts with the CLIPModel in ``checkpoint``.

    scaled: multiply the cosine by exp(logit_scale) (PickScore) or not (CLIP score); dtype: compute dtype of
    the CLIP towers (parameters and scores stay float32). The batch must hold ``reward_tokens`` (b, 77) int32,
    which :attr:`Reward.prepare` produces from the prompts.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.reward.options.dtype: must be 'float32' or 'bfloat16', got {dtype!r}")
    folder = check_clip_folder(checkpoint, what, published)
    processing = CLIPImageProcessing.from_file(folder / "preprocessor_config.json")
    model = load_clip_model(folder, dtype=jnp.dtype(dtype))
    tokenize = load_hf_tokenizer(folder, kind="clip", max_length=model.text_config.max_position_embeddings)
    graphdef, params = nnx.split(model)

    def fn(params: nnx.State, images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        """images (b, h, w, 3) float32 in [0, 1], batch[reward_tokens] (b, seq) int32 -> scores (b,) float32."""
        clip = nnx.merge(graphdef, params)
        image = _unit(clip.get_image_features(processing(images)))
        # Right padding needs no attention mask: the causal mask already hides it from the pooled EOS token.
        text = _unit(clip.get_text_features(batch[TOKENS_KEY]))
        cosine = jnp.sum(image * text, axis=-1)
        return jnp.exp(clip.logit_scale[...].astype(jnp.float32)) * cosine if scaled else cosine

    def prepare(prompts: Sequence[str]) -> dict[str, np.ndarray]:
        return {TOKENS_KEY: tokenize(prompts)}

    return Reward(fn=fn, params=params, prepare=prepare)


@register("pickscore")
def pickscore_reward(checkpoint: str | None = None, dtype: str = "float32") -> Reward:
    """PickScore: exp(logit_scale) * cosine(text, image) of the PickScore_v1 CLIPModel in ``checkpoint``."""
    return clip_reward(checkpoint, scaled=True, what="PickScore", published=PICKSCORE_PUBLISHED, dtype=dtype)


@register("clip_score")
def clip_score_reward(checkpoint: str | None = None, dtype: str = "float32") -> Reward:
    """CLIP score: cosine(text, image) in [-1, 1] of the CLIPModel in ``checkpoint``."""
    return clip_reward(checkpoint, scaled=False, what="CLIP", published=CLIP_PUBLISHED, dtype=dtype)
