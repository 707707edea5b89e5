"""DanceGRPO's Stable Diffusion 1.4 recipe with SLAS advantages, for Cloud TPU (or GPU) hosts.

DDIM 50 steps with eta 1.0, CFG 5 against the empty prompt, 512x512, 16 images per prompt, AdamW lr 1e-5,
weight decay 1e-4, grad clip 1.0, PPO clip 1e-4, advantage clip 5, every transition but the last trained,
full fine-tune of the UNet in bfloat16 compute with float32 parameters.

python -m slas_jax.train --config configs/sd_tpu.py \
    --config.model.checkpoint=/data/stable-diffusion-v1-4 \
    --config.data.options.path=/data/hpdv2_prompts.txt \
    --config.reward.options.checkpoint=/data/PickScore_v1
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "family": "unet",
            "checkpoint": "checkpoints/stable-diffusion-v1-4",
            "resolution": 512,
            "dtype": "bfloat16",
            "remat": True,
        }
    )
    c.sampler = ml_collections.ConfigDict(
        {"name": "ddim", "num_steps": 50, "noise_level": 1.0, "guidance_scale": 5.0, "negative_prompt": ""}
    )
    c.advantage = ml_collections.ConfigDict({"method": "slas", "gamma": 1.0, "adv_clip": 5.0})
    c.loss = ml_collections.ConfigDict(
        {"clip_range": 1e-4, "kl_beta": 0.0, "timestep_fraction": 1.0, "exclude_last_steps": 1}
    )
    c.optim = ml_collections.ConfigDict({"learning_rate": 1e-5, "weight_decay": 1e-4, "grad_clip": 1.0})
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 300,
            "prompts_per_step": 8,
            "group_size": 16,
            "micro_batch_size": 8,
            "grad_accum_steps": 4,
            "seed": 0,
            "log_every": 1,
            "checkpoint_every": 25,
            "output_dir": "runs/sd14_slas",
        }
    )
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.reward = ml_collections.ConfigDict({"name": "pickscore", "options": {"checkpoint": placeholder(str)}})
    c.data = ml_collections.ConfigDict({"name": "text_file", "options": {"path": placeholder(str)}})
    return c
