"""open_clip's ``CLIP`` (ViT towers, e.g. ViT-H-14: laion/CLIP-ViT-H-14-laion2B-s32B-b79K, HPSv2) as our
:class:`~slas_jax.models.clip.CLIPModel`.

open_clip's ViT CLIP is the same network as transformers' CLIPModel under other names: pre-LayerNorm
blocks with a fused ``in_proj`` attention, a causal text tower pooled at the largest token id (open_clip's
"argmax" pooling, our ``eos_token_id=2`` rule), the class token of the vision tower after ``ln_post``, and
projections stored as (in, out) matrices. :func:`clip_configs` reads an open_clip model config (the
``model_cfg`` of an ``open_clip_config.json``) and refuses every setting that would build another network;
:data:`CONVERSION_RULES` maps an open_clip state dict onto the module tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.models import conversion
from slas_jax.models.clip import CLIPModel, CLIPTextConfig, CLIPVisionConfig
from slas_jax.models.conversion import ConversionError, Rule

# Per tower: the keys read into our configs, and the settings that keep open_clip's default network at the
# values given (a missing key takes open_clip's default). Keys listed in _IGNORED change nothing at
# evaluation (patch dropout only acts in training; eos_id / pad_id only with other pooling or class tokens).
_VISION_READ = ("image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size")
_TEXT_READ = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")
_SHARED_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None,
    "final_ln_after_pool": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_VISION_DEFAULTS: dict[str, Any] = {
    **_SHARED_DEFAULTS,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "pool_type": "tok",
    "timm_model_name": None,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    **_SHARED_DEFAULTS,
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
}
_IGNORED = ("patch_dropout", "output_tokens", "eos_id", "pad_id")
_MODEL_DEFAULTS: dict[str, Any] = {
    "custom_text": False,
    "init_logit_bias": None,
    "nonscalar_logit_scale": False,
}
_MODEL_IGNORED = ("quick_gelu", "cast_dtype", "init_logit_scale", "embed_dim", "vision_cfg", "text_cfg")


def _check_settings(
    cfg: Mapping[str, Any],
    read: tuple[str, ...],
    defaults: Mapping[str, Any],
    ignored: tuple[str, ...],
    what: str,
) -> None:
    """ConversionError naming the first key of ``cfg`` that builds a network other than open_clip's default."""
    for key, value in cfg.items():
        if key in read or key in ignored:
            continue
        if key not in defaults:
            raise ConversionError(f"open_clip {what}: setting {key!r} is not supported by slas_jax's CLIP")
        if value != defaults[key]:
            raise ConversionError(
                f"open_clip {what}: {key}={value!r} is not supported (only {defaults[key]!r}, open_clip's default)"
            )


def _square(size: Any) -> int:
    """open_clip's int or (height, width) image size as one side."""
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise ConversionError(f"open_clip vision_cfg: image_size {size!r} is not square")


def clip_configs(
    model_cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, remat: bool = False
) -> tuple[CLIPTextConfig, CLIPVisionConfig]:
    """(text, vision) configs of open_clip's ViT ``CLIP`` described by ``model_cfg`` (embed_dim, vision_cfg,
    text_cfg, quick_gelu; e.g. ``open_clip.get_model_config('ViT-H-14')``), with open_clip's defaults for
    missing keys (head_width 64, mlp_ratio 4, 8 text heads, 77 tokens of a 49408-token vocabulary)."""
    vision_cfg, text_cfg = model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")
    if (
        not isinstance(vision_cfg, Mapping)
        or not isinstance(text_cfg, Mapping)
        or "embed_dim" not in model_cfg
    ):
        raise ConversionError("open_clip model config: expected embed_dim, vision_cfg and text_cfg")
    _check_settings(model_cfg, (), _MODEL_DEFAULTS, _MODEL_IGNORED, "model config")
    _check_settings(vision_cfg, _VISION_READ, _VISION_DEFAULTS, _IGNORED, "vision_cfg")
    _check_settings(text_cfg, _TEXT_READ, _TEXT_DEFAULTS, _IGNORED, "text_cfg")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    embed_dim = int(model_cfg["embed_dim"])
    vision_width = int(vision_cfg.get("width", 768))
    text_width = int(text_cfg.get("width", 512))
    if not isinstance(vision_cfg.get("layers", 12), int):
        raise ConversionError("open_clip vision_cfg: a ResNet tower (layers as a tuple) is not supported")
    try:
        text = CLIPTextConfig(
            vocab_size=int(text_cfg.get("vocab_size", 49408)),
            hidden_size=text_width,
            intermediate_size=int(text_width * text_cfg.get("mlp_ratio", 4.0)),
            num_hidden_layers=int(text_cfg.get("layers", 12)),
            num_attention_heads=int(text_cfg.get("heads", 8)),
            max_position_embeddings=int(text_cfg.get("context_length", 77)),
            hidden_act=act,
            eos_token_id=2,  # pool at the largest token id: open_clip's "argmax" pooling
            with_projection=True,
            projection_dim=embed_dim,
            dtype=dtype,
            remat=remat,
        )
        vision = CLIPVisionConfig(
            hidden_size=vision_width,
            intermediate_size=int(vision_width * vision_cfg.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision_cfg.get("layers", 12),
            num_attention_heads=vision_width // int(vision_cfg.get("head_width", 64)),
            image_size=_square(vision_cfg.get("image_size", 224)),
            patch_size=int(vision_cfg.get("patch_size", 16)),
            hidden_act=act,
            projection_dim=embed_dim,
            dtype=dtype,
            remat=remat,
        )
    except ValueError as e:
        raise ConversionError(f"open_clip model config: {e}") from e
    return text, vision


def _split_in_proj(array: np.ndarray) -> tuple[np.ndarray, ...]:
    """nn.MultiheadAttention's fused (3 dim, dim) weight / (3 dim,) bias -> q, k, v in our layout."""
    return tuple(part.T if part.ndim == 2 else part for part in np.split(array, 3, axis=0))


def _identity(array: np.ndarray) -> np.ndarray:
    return array


def _tower_rules(source: str, tower: str) -> tuple[Rule, ...]:
    """Rules of one tower's residual blocks: open_clip ``{source}transformer.resblocks.N`` -> our
    ``{tower}.encoder.layers.N``."""
    block = rf"^{source}transformer\.resblocks\.(\d+)\."
    layer = rf"{tower}.encoder.layers.\1."
    return (
        Rule(
            block + r"attn\.in_proj_(weight|bias)$",
            tuple(layer + rf"self_attn.{p}_proj.\2" for p in "qkv"),
            _split_in_proj,
        ),
        Rule(block + r"attn\.out_proj\.(weight|bias)$", layer + r"self_attn.out_proj.\2"),
        Rule(block + r"ln_([12])\.(weight|bias)$", layer + r"layer_norm\2.\3"),
        Rule(block + r"mlp\.c_fc\.(weight|bias)$", layer + r"mlp.fc1.\2"),
        Rule(block + r"mlp\.c_proj\.(weight|bias)$", layer + r"mlp.fc2.\2"),
    )


CONVERSION_RULES: tuple[Rule, ...] = (
    *_tower_rules("", "text_model"),
    *_tower_rules(r"visual\.", "vision_model"),
    Rule(r"^token_embedding\.weight$", "text_model.embeddings.token_embedding.weight"),
    Rule(r"^positional_embedding$", "text_model.embeddings.position_embedding.embedding"),
    Rule(r"^ln_final\.(weight|bias)$", r"text_model.final_layer_norm.\1"),
    # open_clip multiplies by its projections (x @ proj): they are stored (in, out) already.
    Rule(r"^text_projection$", "text_projection.kernel", _identity),
    Rule(r"^visual\.proj$", "visual_projection.kernel", _identity),
    Rule(r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    Rule(r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.embedding"),
    Rule(r"^visual\.conv1\.weight$", "vision_model.embeddings.patch_embedding.kernel"),
    Rule(r"^visual\.ln_pre\.(weight|bias)$", r"vision_model.pre_layrnorm.\1"),
    Rule(r"^visual\.ln_post\.(weight|bias)$", r"vision_model.post_layernorm.\1"),
    Rule(r"^logit_scale$", "logit_scale"),
)
"""open_clip ``CLIP.state_dict()`` names (ViT towers) -> :class:`~slas_jax.models.clip.CLIPModel`."""


def make_clip_model(
    model_cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, remat: bool = False
) -> CLIPModel:
    """A :class:`CLIPModel` with fresh parameters shaped as open_clip's ``model_cfg`` (call it under
    ``nnx.eval_shape`` to allocate nothing)."""
    text, vision = clip_configs(model_cfg, dtype=dtype, remat=remat)
    return CLIPModel(text, vision, rngs=nnx.Rngs(0))


def load_open_clip(
    tensors: Mapping[str, np.ndarray],
    model_cfg: Mapping[str, Any],
    *,
    dtype: Any = jnp.float32,
    source: str = "open_clip checkpoint",
) -> CLIPModel:
    """The :class:`CLIPModel` of open_clip's ``model_cfg`` filled from its state dict ``tensors`` (numpy
    arrays by open_clip name); every tensor must be used and every parameter filled."""
    return conversion.load_module(
        lambda: make_clip_model(model_cfg, dtype=dtype), tensors, CONVERSION_RULES, source=source
    )
