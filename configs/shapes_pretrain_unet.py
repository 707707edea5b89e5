"""Pretraining of the shapes testbed's UNet base model: the SD1.x UNet class (pixel space, channels
(32, 64), cross-attention at 16x16 and in the mid block) with its tiny CLIP text encoder, trained for
epsilon prediction under the DDPM forward process on renders of the training prompts, stopped early on
purpose (imperfect base model).

Regenerate the shipped checkpoint (bit for bit on the same machine and software; compare ``params_sha256`` in
checkpoints/shapes_unet/metadata.json):

    python -m slas_jax.testbed.pretrain --config configs/shapes_pretrain_unet.py

RL configs use it with the same ``model`` section plus ``model.init_checkpoint = "checkpoints/shapes_unet"``;
``sampler`` holds the RL sampler settings (DDIM, eta) the evaluation samples with.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "family": "unet",
            "resolution": 32,
            "seed": 0,
            "architecture": {
                "block_out_channels": (32, 64),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "layers_per_block": 1,
                "num_attention_heads": 2,
                "norm_num_groups": 8,
            },
            "text_architecture": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
        }
    )
    c.sampler = ml_collections.ConfigDict(
        {"name": "ddim", "num_steps": 10, "noise_level": 1.0, "guidance_scale": 1.0}
    )
    c.pretrain = ml_collections.ConfigDict(
        {
            "steps": 1500,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "warmup_steps": 50,
            "final_lr_fraction": 0.1,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "seed": 0,
            "cond_dropout": 0.1,
            "min_snr_gamma": 5.0,
            "output_dir": "checkpoints/shapes_unet",
            "eval_samples_per_prompt": 2,
            "eval_seed": 1,
            "eval_chunk": 128,
            # ADM's zero_module: every residual branch (resnet conv2, transformer proj_out) and the output
            # convolution start at zero.
            "zero_init": (r"resnets\.\d+\.conv2\.", r"attentions\.\d+\.proj_out\.", r"^conv_out\."),
            "ema_decay": 0.995,
            "log_every": 50,
        }
    )
    return c
