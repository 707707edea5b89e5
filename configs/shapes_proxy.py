"""The shapes testbed's learned proxy reward ("proxy", the testbed's HPS): a tiny CLIP (two 3x3 convolutions
at full resolution in front of a ViT on 4x4-pixel patches, a word-level text tower, width 64) whose scaled
cosine plus bias regresses the ground-truth partial score on a limited labelled sample of the training
prompts (renders, half of them blurred and noised, and base-model samples in groups of 8 per prompt; each
image with its own prompt, a near miss and another prompt of its category). Needs checkpoints/shapes_flow
and checkpoints/shapes_unet to exist. Most model samples come from the flow base, the demo's policy: RL
ranks the policy's own samples, and HPS is likewise trained on generated images.

What GRPO reads is the order of the samples of one prompt, which a proxy fitted to absolute scores alone
gets poorly; hence groups of 8 per prompt with the within-group loss (``rank_weight``), each image seen at a
random offset of the patch grid (``phases``), and the convolutional ``stem``, without which the ViT cannot
read an object's shape from linearly embedded 4x4 patches. The measurements behind each choice are in
docs/testbed.md.

Regenerate the shipped checkpoint (bit for bit on the same machine and software; compare ``params_sha256`` in
checkpoints/shapes_proxy/metadata.json):

    python -m slas_jax.testbed.train_proxy --config configs/shapes_proxy.py

RL configs select it with ``reward.name = "proxy"`` (option ``checkpoint``, default checkpoints/shapes_proxy).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "architecture": {
                "text": {
                    "hidden_size": 64,
                    "intermediate_size": 128,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                },
                "vision": {
                    "hidden_size": 64,
                    "intermediate_size": 128,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "patch_size": 4,
                },
                "projection_dim": 64,
                "phases": 4,
                "stem": (32, 32),
            },
            "model_seed": 0,
            "renders": 12288,
            "degraded_fraction": 0.5,
            "max_blur": 1.5,
            "max_noise": 0.08,
            "base_checkpoints": ("checkpoints/shapes_flow", "checkpoints/shapes_unet"),
            "base_samples": (8192, 768),
            "base_group_size": 8,
            "validation_fraction": 0.2,
            "ood_renders": 256,
            "ood_base_samples": 256,
            "steps": 3000,
            "batch_size": 128,
            "learning_rate": 1e-3,
            "warmup_steps": 100,
            "weight_decay": 1e-4,
            "rank_weight": 3.0,
            "group_batch": 16,
            "seed": 0,
            "output_dir": "checkpoints/shapes_proxy",
            "log_every": 100,
        }
    )
