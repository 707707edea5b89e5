"""Smoke run on CPU: a tiny random pixel-space SD UNet + CLIP text encoder learns to brighten the image
region its prompt names ("bright top", ...). Exercises the whole GRPO loop in a few minutes on 2 cores.

python -m slas_jax.train --config configs/brightness_cpu.py --config.advantage.method=dance_grpo
"""

import ml_collections

from slas_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.model.family = "unet"
    c.model.resolution = 16
    c.model.architecture = {
        "block_out_channels": (16, 32),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "num_attention_heads": 2,
        "norm_num_groups": 4,
    }
    c.model.text_architecture = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    c.sampler.name = "ddim"
    c.sampler.num_steps = 6
    c.sampler.noise_level = 1.0
    c.advantage.method = "slas"
    c.loss.clip_range = 0.05
    c.loss.timestep_fraction = 0.5
    c.loss.exclude_last_steps = 1
    c.optim.learning_rate = 3e-4
    c.train.num_steps = 30
    c.train.prompts_per_step = 4
    c.train.group_size = 8
    c.train.micro_batch_size = 16
    c.train.output_dir = "runs/brightness_cpu"
    c.reward.name = "brightness"
    c.data.name = "brightness"
    return c
