"""DanceGRPO's FLUX.1-dev recipe (``scripts/finetune/finetune_flux_grpo.sh``, 2 nodes x 8 GPUs) with SLAS
advantages, for Cloud TPU (or GPU) hosts; ``configs/flux_tpu.py:dance_grpo`` is the DanceGRPO baseline itself.

As the peer: reward HPS-v2.1; DanceGRPO's FLUX step (score-based SDE, eta 0.3) over 16 steps of the
SD3-shifted schedule (shift 3); guidance 3.5 embedded in the guidance-distilled transformer and no
classifier-free guidance; 720x720; 16 prompts x 12 images from one initial noise per prompt; the image decoded
from the last clean estimate and the last transition never trained; 60% of the trained transitions per
sample; 192 images per step in three optimizer updates of 64 (micro-batches of 16 = one per GPU, 4
accumulated); PPO clip 1e-4, advantage clip 5; AdamW lr 1e-5, eps 1e-8, weight decay 1e-4, grad clip 1.0;
full fine-tune of the transformer in bfloat16 compute with float32 parameters. The ``dance_grpo`` variant
uses DanceGRPO's per-prompt (r - mean) / (unbiased std + 1e-8).

Deliberate departures from the peer's script:
- trained timesteps: DanceGRPO draws one random subset of timesteps per step for all samples; here each
  sample draws its own (``loss.select_timesteps``), the same fraction;
- HPS input: DanceGRPO's FLUX script scores the image saved as an 8-bit PNG (rounded levels); here the
  float image is scored directly (its SD script's JPEG round trip, ``reward.options.jpeg_quality``, is not
  part of the FLUX recipe);
- rematerialisation per block (``model.remat``) instead of PyTorch's gradient checkpointing;
- no EMA: the 16-GPU script keeps none (its 8-GPU sibling keeps an EMA at 0.995 with grad clip 0.01,
  which slas-jax does not offer).

The 12B transformer and its AdamW state need to be sharded: set ``mesh.fsdp`` to the number of chips (it
must divide the device count; ``mesh.data`` takes the rest).

python -m slas_jax.train --config configs/flux_tpu.py \\
    --config.model.checkpoint=/data/FLUX.1-dev \\
    --config.mesh.fsdp=16 \\
    --config.data.options.path=/data/hpdv2_prompts.txt \\
    --config.reward.options.checkpoint=/data/hps_v2.1
"""

import ml_collections
from ml_collections.config_dict import placeholder

from slas_jax.config import defaults

VARIANTS = ("slas", "dance_grpo")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    method = variant.strip() or "slas"
    if method not in VARIANTS:
        raise ValueError(f"unknown flux_tpu variant {method!r}: choose from {', '.join(VARIANTS)}")
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
    c.advantage.method = method
    c.advantage.gamma = 1.0
    c.advantage.eps = 1e-8 if method == "dance_grpo" else 1e-6
    c.advantage.adv_clip = 5.0
    c.loss.clip_range = 1e-4
    c.loss.timestep_fraction = 0.6
    c.loss.exclude_last_steps = 1
    c.optim.learning_rate = 1e-5
    c.optim.eps = 1e-8
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 1.0
    c.train.num_steps = 300
    c.train.prompts_per_step = 16
    c.train.group_size = 12
    c.train.micro_batch_size = 16
    c.train.grad_accum_steps = 4
    c.train.checkpoint_every = 25
    c.train.output_dir = f"runs/flux_dev_{method}"
    c.reward.name = "hps_v2"
    c.reward.options = {"checkpoint": "checkpoints/hps_v2.1"}
    c.data.name = "text_file"
    c.data.options = {"path": placeholder(str), "seed": 0, "data_dir": "~/tensorflow_datasets"}
    return c
