"""DanceGRPO's Stable Diffusion 1.4 recipe with SLAS advantages, for Cloud TPU (or GPU) hosts.

DDIM 50 steps with eta 1.0, CFG 5 against the empty prompt, 512x512, 16 images per prompt, AdamW lr 1e-5,
weight decay 1e-4, grad clip 1.0, PPO clip 1e-4, advantage clip 5, every transition but the last trained,
full fine-tune of the UNet in bfloat16 compute with float32 parameters.

python -m slas_jax.train --config configs/sd_tpu.py \\
    --config.model.checkpoint=/data/stable-diffusion-v1-4 \\
    --config.data.options.path=/data/hpdv2_prompts.txt \\
    --config.reward.options.checkpoint=/data/PickScore_v1
"""

import ml_collections
from ml_collections.config_dict import placeholder

from slas_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.model.family = "unet"
    c.model.checkpoint = "checkpoints/stable-diffusion-v1-4"
    c.model.resolution = 512
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.sampler.name = "ddim"
    c.sampler.num_steps = 50
    c.sampler.noise_level = 1.0
    c.sampler.guidance_scale = 5.0
    c.sampler.negative_prompt = ""
    c.advantage.method = "slas"
    c.advantage.gamma = 1.0
    c.advantage.adv_clip = 5.0
    c.loss.clip_range = 1e-4
    c.loss.timestep_fraction = 1.0
    c.loss.exclude_last_steps = 1
    c.optim.learning_rate = 1e-5
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 1.0
    c.train.num_steps = 300
    c.train.prompts_per_step = 8
    c.train.group_size = 16
    c.train.micro_batch_size = 8
    c.train.grad_accum_steps = 4
    c.train.checkpoint_every = 25
    c.train.output_dir = "runs/sd14_slas"
    c.reward.name = "pickscore"
    c.reward.options = {"checkpoint": placeholder(str)}
    c.data.name = "text_file"
    c.data.options = {"path": placeholder(str), "seed": 0, "data_dir": "~/tensorflow_datasets"}
    return c
