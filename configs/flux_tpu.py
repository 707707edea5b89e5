"""DanceGRPO's FLUX.1-dev recipe with SLAS advantages, for Cloud TPU (or GPU) hosts.

DanceGRPO's FLUX step (score-based SDE, eta 0.3) over 16 steps of the SD3-shifted schedule (shift 3),
guidance 3.5 embedded in the guidance-distilled transformer and no classifier-free guidance, 720x720,
12 images per prompt from the same initial noise, 60% of the trainable transitions per sample (all but the
last), PPO clip 1e-4, advantage clip 5, AdamW lr 1e-5, weight decay 1e-4, grad clip 1.0. Full fine-tune of
the transformer in bfloat16 compute with float32 parameters and per-block rematerialisation.
Each step is 16 prompts x 12 images in two optimizer updates of 96 images (DanceGRPO: 12 images x 8 GPUs
of gradient accumulation), micro-batches of 8.

The 12B transformer and its AdamW state need to be sharded: set ``mesh.fsdp`` to the number of chips (it
must divide the device count; ``mesh.data`` takes the rest).

python -m slas_jax.train --config configs/flux_tpu.py \\
    --config.model.checkpoint=/data/FLUX.1-dev \\
    --config.mesh.fsdp=16 \\
    --config.data.options.path=/data/hpdv2_prompts.txt \\
    --config.reward.options.checkpoint=/data/PickScore_v1
"""

import ml_collections
from ml_collections.config_dict import placeholder

from slas_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.model.family = "flux"
    c.model.checkpoint = "checkpoints/FLUX.1-dev"
    c.model.resolution = 720
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.sampler.name = "dance_flow"
    c.sampler.num_steps = 16
    c.sampler.noise_level = 0.3  # eta
    c.sampler.schedule = "shift"  # DanceGRPO's sd3_time_shift, not FluxPipeline's resolution-dependent one
    c.sampler.shift = 3.0
    c.sampler.flux_guidance = 3.5
    c.sampler.guidance_scale = 1.0
    c.sampler.same_noise_in_group = True
    c.sampler.decode = "prediction"
    c.advantage.method = "slas"
    c.advantage.gamma = 1.0
    c.advantage.adv_clip = 5.0
    c.loss.clip_range = 1e-4
    c.loss.timestep_fraction = 0.6
    c.loss.exclude_last_steps = 1
    c.optim.learning_rate = 1e-5
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 1.0
    c.train.num_steps = 300
    c.train.prompts_per_step = 16
    c.train.group_size = 12
    c.train.micro_batch_size = 8
    c.train.grad_accum_steps = 12
    c.train.checkpoint_every = 25
    c.train.output_dir = "runs/flux_dev_slas"
    c.reward.name = "pickscore"
    c.reward.options = {"checkpoint": placeholder(str)}
    c.data.name = "text_file"
    c.data.options = {"path": placeholder(str), "seed": 0, "data_dir": "~/tensorflow_datasets"}
    return c
