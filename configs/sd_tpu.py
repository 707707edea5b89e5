"""DanceGRPO's Stable Diffusion 1.4 recipe (``fastvideo/config_sd/dgx.py:hpsv2``, 8 GPUs) with SLAS
advantages, for Cloud TPU (or GPU) hosts; ``configs/sd_tpu.py:dance_grpo`` is the DanceGRPO baseline itself.

As the peer: reward HPS-v2.1; DDIM 50 steps with eta 1.0; CFG 5 against the empty prompt; 512x512; 32
prompts x 16 images = 512 images per step in two optimizer updates of 256 (micro-batches of 32 = 4 per GPU x
8 GPUs, 8 accumulated); every transition but the last trained (``timestep_fraction`` 1.0 over the 49 the
peer trains); PPO clip 1e-4, advantage clip 5; AdamW lr 1e-5, betas 0.9 / 0.999, eps 1e-8, weight decay 1e-4,
grad clip 1.0; full fine-tune of the UNet in bfloat16 compute with float32 parameters; the same initial noise
within a group; HPS scores the image as DanceGRPO's script does, truncated to 8 bits, resized to 512 px and
round-tripped through a quality-75 JPEG (``reward.options.jpeg_quality``, bit-exact against PIL). The ``dance_grpo`` variant uses DanceGRPO's per-prompt (r - mean) / (unbiased std + 1e-8).

Deliberate departures from the peer's script:
- initial noise: DanceGRPO draws one noise for every image of a step (all prompts); here each prompt's group
  shares one noise (``sampler.same_noise_in_group``), which is what its group-relative advantages rely on;
- gradient checkpointing per block (``model.remat``) instead of PyTorch's, and the accumulation order of
  the micro-batches is fixed (the peer's follows its data loader);
- no EMA: the SD script keeps none.

python -m slas_jax.train --config configs/sd_tpu.py \\
    --config.model.checkpoint=/data/stable-diffusion-v1-4 \\
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
        raise ValueError(f"unknown sd_tpu variant {method!r}: choose from {', '.join(VARIANTS)}")
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
    c.sampler.same_noise_in_group = True
    c.advantage.method = method
    c.advantage.gamma = 1.0
    c.advantage.eps = 1e-8 if method == "dance_grpo" else 1e-6
    c.advantage.adv_clip = 5.0
    c.loss.clip_range = 1e-4
    c.loss.timestep_fraction = 1.0
    c.loss.exclude_last_steps = 1
    c.optim.learning_rate = 1e-5
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 1.0
    c.train.num_steps = 300
    c.train.prompts_per_step = 32
    c.train.group_size = 16
    c.train.micro_batch_size = 32
    c.train.grad_accum_steps = 8
    c.train.checkpoint_every = 25
    c.train.output_dir = f"runs/sd14_{method}"
    c.reward.name = "hps_v2"
    c.reward.options = {"checkpoint": "checkpoints/hps_v2.1", "jpeg_quality": 75}
    c.data.name = "text_file"
    c.data.options = {"path": placeholder(str), "seed": 0, "data_dir": "~/tensorflow_datasets"}
    return c
