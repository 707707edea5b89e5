"""Smoke run on CPU: a tiny random pixel-space SD UNet + CLIP text encoder learns to brighten the image
region its prompt names ("bright top", ...). Exercises the whole GRPO loop in a few minutes on 2 cores.

python -m slas_jax.train --config configs/brightness_cpu.py --config.advantage.method=dance_grpo
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "family": "unet",
            "checkpoint": ml_collections.config_dict.placeholder(str),
            "resolution": 16,
            "architecture": {
                "block_out_channels": (16, 32),
                "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
                "layers_per_block": 1,
                "num_attention_heads": 2,
                "norm_num_groups": 4,
            },
            "text_architecture": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
        }
    )
    c.sampler = ml_collections.ConfigDict(
        {"name": "ddim", "num_steps": 6, "noise_level": 1.0, "guidance_scale": 1.0}
    )
    c.advantage = ml_collections.ConfigDict({"method": "slas", "gamma": 1.0, "adv_clip": 5.0})
    c.loss = ml_collections.ConfigDict(
        {"clip_range": 0.05, "timestep_fraction": 0.5, "exclude_last_steps": 1}
    )
    c.optim = ml_collections.ConfigDict({"learning_rate": 3e-4, "weight_decay": 1e-4, "grad_clip": 1.0})
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 30,
            "prompts_per_step": 4,
            "group_size": 8,
            "micro_batch_size": 16,
            "grad_accum_steps": 1,
            "seed": 0,
            "log_every": 1,
            "output_dir": "runs/brightness_cpu",
        }
    )
    c.reward = ml_collections.ConfigDict({"name": "brightness", "options": {}})
    c.data = ml_collections.ConfigDict({"name": "brightness", "options": {}})
    return c
