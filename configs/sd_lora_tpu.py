"""``configs/sd_tpu.py`` (DanceGRPO's SD 1.4 recipe with SLAS advantages) training LoRA adapters instead of
the whole UNet, at Flow-GRPO's LoRA settings: rank 32, alpha 64 (scale 2), AdamW lr 3e-4, on the attention
projections ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0`` of every self- (``attn1``) and cross-attention
(``attn2``) layer, the modules DDPO's and Flow-GRPO's peft configs adapt (the UNet has no ``add_*``
projections). ``:dance_grpo`` uses DanceGRPO's advantages.

Only the adapters have gradients and AdamW moments; with ``loss.kl_beta`` > 0 the KL reference is the frozen
UNet with the adapters switched off (no copy). Policy exports hold the adapters as
``diffusers/pytorch_lora_weights.safetensors``, which ``StableDiffusionPipeline.load_lora_weights`` reads.

python -m slas_jax.train --config configs/sd_lora_tpu.py \\
    --config.model.checkpoint=/data/stable-diffusion-v1-4 \\
    --config.data.options.path=/data/hpdv2_prompts.txt \\
    --config.reward.options.checkpoint=/data/hps_v2.1
"""

import runpy
from pathlib import Path

import ml_collections

ATTENTION_TARGETS = (r"attn[12]\.to_(q|k|v)$", r"attn[12]\.to_out\.0$")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = runpy.run_path(str(Path(__file__).with_name("sd_tpu.py")))["get_config"](variant)
    c.model.lora.rank = 32
    c.model.lora.alpha = 64.0
    c.model.lora.targets = ATTENTION_TARGETS
    c.optim.learning_rate = 3e-4
    c.train.output_dir = c.train.output_dir.replace("sd14_", "sd14_lora_")
    return c
