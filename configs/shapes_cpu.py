"""The default demo: SLAS on the shapes testbed's FLUX-class flow backbone, trained against the learned proxy
reward, with the pixel ground truth measured beside it (in-domain and on held-out prompt combinations).

python -m slas_jax.train --config configs/shapes_cpu.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "family": "flux",
            "resolution": 32,
            "architecture": {
                "num_layers": 2,
                "num_single_layers": 2,
                "attention_head_dim": 32,
                "num_attention_heads": 2,
                "axes_dims_rope": (8, 12, 12),
            },
            "text_architecture": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
        }
    )
    c.sampler = ml_collections.ConfigDict({"name": "flow_sde", "num_steps": 8, "noise_level": 0.7, "shift": 3.0})
    c.advantage = ml_collections.ConfigDict({"method": "slas", "gamma": 1.0, "adv_clip": 5.0})
    c.loss = ml_collections.ConfigDict({"clip_range": 0.05, "timestep_fraction": 0.5})
    c.optim = ml_collections.ConfigDict({"learning_rate": 3e-4, "weight_decay": 1e-4, "grad_clip": 1.0})
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 30,
            "prompts_per_step": 8,
            "group_size": 8,
            "micro_batch_size": 32,
            "output_dir": "runs/shapes_cpu",
        }
    )
    c.reward = ml_collections.ConfigDict({"name": "shapes", "options": {"kind": "partial"}})
    c.data = ml_collections.ConfigDict({"name": "shapes", "options": {"split": "train"}})
    c.eval = ml_collections.ConfigDict(
        {
            "scorer": "shapes",
            "every": 10,
            "sets": {
                "train": {"name": "shapes", "options": {"split": "train", "seed": 1}},
                "held_out": {"name": "shapes", "options": {"split": "held_out", "seed": 1}},
            },
            "num_prompts": 24,
            "samples_per_prompt": 2,
            "grid_prompts": 8,
        }
    )
    return c
