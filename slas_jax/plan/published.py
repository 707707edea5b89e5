"""The architecture settings of the published checkpoints the paper's recipes train, as their config.json
files on the Hugging Face Hub state them, so that a recipe can be planned on a machine without the weights.

- ``unet``: CompVis/stable-diffusion-v1-4 (UNet 860M, CLIP ViT-L/14 text encoder 123M, VAE 84M);
- ``flux``: black-forest-labs/FLUX.1-dev (transformer 11.9B, CLIP ViT-L/14 text 123M, T5-v1.1-XXL encoder
  4.76B, 16-channel VAE 84M);
- :data:`HPS_V2_MODEL_CFG`: open_clip's ViT-H-14 ``model_cfg`` (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), the
  architecture of HPS-v2.1 (986M).

Only keys our config readers use are kept; the shapes they give are checked against the published parameter
counts in tests/test_plan.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_CLIP_L_TEXT = {
    "architectures": ["CLIPTextModel"],
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 2,
    "projection_dim": 768,
}
_VAE_BLOCKS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

PIPELINES: dict[str, dict[str, Any]] = {
    "unet": {
        "name": "CompVis/stable-diffusion-v1-4",
        "model_index.json": {"_class_name": "StableDiffusionPipeline"},
        "scheduler/scheduler_config.json": {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "clip_sample": False,
        },
        "unet/config.json": {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "attention_head_dim": 8,
            "cross_attention_dim": 768,
            "norm_num_groups": 32,
        },
        "text_encoder/config.json": _CLIP_L_TEXT,
        "vae/config.json": {
            **_VAE_BLOCKS,
            "latent_channels": 4,
            "sample_size": 512,
            "scaling_factor": 0.18215,
        },
    },
    "flux": {
        "name": "black-forest-labs/FLUX.1-dev",
        "model_index.json": {"_class_name": "FluxPipeline"},
        "scheduler/scheduler_config.json": {
            "base_image_seq_len": 256,
            "base_shift": 0.5,
            "max_image_seq_len": 4096,
            "max_shift": 1.15,
            "num_train_timesteps": 1000,
            "shift": 3.0,
            "use_dynamic_shifting": True,
        },
        "transformer/config.json": {
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": True,
            "axes_dims_rope": [16, 56, 56],
        },
        "text_encoder/config.json": _CLIP_L_TEXT,
        "text_encoder_2/config.json": {
            "vocab_size": 32128,
            "d_model": 4096,
            "d_kv": 64,
            "d_ff": 10240,
            "num_layers": 24,
            "num_heads": 64,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6,
            "feed_forward_proj": "gated-gelu",
        },
        "vae/config.json": {
            **_VAE_BLOCKS,
            "latent_channels": 16,
            "sample_size": 1024,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
    },
}
"""Per model family: the published pipeline's ``name`` and its config files (path in the folder -> JSON)."""

HPS_V2_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}
"""open_clip's ViT-H-14 ``model_cfg`` (HPS-v2.1 fine-tunes it without changing a shape)."""


def write_config_folder(family: str, folder: str | Path) -> str:
    """Writes the published pipeline of ``family``'s config files into ``folder`` (what an abstract build
    reads) and returns the pipeline's name."""
    published = PIPELINES[family]
    for path, content in published.items():
        if path == "name":
            continue
        target = Path(folder) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content, indent=2) + "\n")
    return published["name"]
