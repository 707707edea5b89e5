"""DanceGRPO's FLUX.1-dev LoRA recipe (``scripts/finetune/finetune_flux_grpo_8gpus_lora.sh`` with
``fastvideo/train_grpo_flux_lora.py``) with SLAS advantages: ``configs/flux_tpu.py`` with the transformer
frozen and rank-128 adapters (alpha 256, scale 2) on the attention projections DanceGRPO's peft config
names, ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``: q, k, v of the 19 double- and the 38 single-stream
blocks and the double-stream blocks' output projection. ``:dance_grpo`` is the DanceGRPO baseline itself.

From the LoRA script: AdamW lr 3e-4 (weight decay 1e-4, grad clip 1.0), 12 sampler steps, the rest as
``flux_tpu.py`` (eta 0.3, shift 3, 720x720, 12 images per prompt from one noise, 60% of the transitions,
PPO clip 1e-4, advantage clip 5). Departures: the batch structure is flux_tpu's (16 prompts x 12 images
per step in three updates), not the 4-GPU script's; and those of ``flux_tpu.py``.

Only the adapters (about 0.6% of the 12B parameters) have gradients and AdamW moments; the KL reference,
when ``loss.kl_beta`` > 0, is the frozen transformer itself with the adapters switched off (no copy). The
frozen transformer still needs sharding over the chips (``mesh.fsdp``). Policy exports hold the adapters as
``diffusers/pytorch_lora_weights.safetensors``, which ``FluxPipeline.load_lora_weights`` reads.

python -m slas_jax.train --config configs/flux_lora_tpu.py \\
    --config.model.checkpoint=/data/FLUX.1-dev \\
    --config.mesh.fsdp=8 \\
    --config.data.options.path=/data/hpdv2_prompts.txt \\
    --config.reward.options.checkpoint=/data/hps_v2.1
"""

import runpy
from pathlib import Path

import ml_collections

DANCE_GRPO_TARGETS = (r"attn\.to_(q|k|v)$", r"attn\.to_out\.0$")
"""peft's target_modules ["to_k", "to_q", "to_v", "to_out.0"] over our Linear paths."""


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = runpy.run_path(str(Path(__file__).with_name("flux_tpu.py")))["get_config"](variant)
    c.model.lora.rank = 128
    c.model.lora.alpha = 256.0
    c.model.lora.targets = DANCE_GRPO_TARGETS
    c.optim.learning_rate = 3e-4
    c.sampler.num_steps = 12
    c.train.output_dir = c.train.output_dir.replace("flux_dev_", "flux_dev_lora_")
    return c
