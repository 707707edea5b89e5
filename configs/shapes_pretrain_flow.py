"""Pretraining of the shapes testbed's flow base model: the FLUX transformer class (pixel space, 2x2 pixel
patches as tokens, 2 double- + 2 single-stream blocks, 4 heads of 32, width 128) with its tiny CLIP text
encoder, trained by flow matching on renders of the training prompts, stopped early on purpose (an
imperfect base model). 6,000 steps: at 3,000 the model drew blobs whose shape the ground truth cannot tell,
and every partial-credit term starts from the shape (measurements in docs/testbed.md).

Regenerate the shipped checkpoint (bit for bit on the same machine and software; compare ``params_sha256`` in
checkpoints/shapes_flow/metadata.json):

    python -m slas_jax.testbed.pretrain --config configs/shapes_pretrain_flow.py

RL configs use it with the same ``model`` section plus ``model.init_checkpoint = "checkpoints/shapes_flow"``;
``sampler`` holds the RL sampler settings the evaluation samples with.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "family": "flux",
            "resolution": 32,
            "seed": 0,
            "architecture": {
                "num_layers": 2,
                "num_single_layers": 2,
                "attention_head_dim": 32,
                "num_attention_heads": 4,
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
    c.sampler = ml_collections.ConfigDict(
        {
            "name": "flow_sde",
            "num_steps": 8,
            "noise_level": 0.7,
            "shift": 3.0,
            "guidance_scale": 1.0,
            # As the RL demo: the image is the model's clean estimate at the last step, since the last SDE
            # step adds pixel noise the scorer would count against it.
            "decode": "prediction",
        }
    )
    c.pretrain = ml_collections.ConfigDict(
        {
            "steps": 6000,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "warmup_steps": 50,
            "final_lr_fraction": 0.1,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "seed": 0,
            "cond_dropout": 0.1,
            "logit_mean": 0.0,
            "logit_std": 1.0,
            "time_shift": 3.0,
            "output_dir": "checkpoints/shapes_flow",
            "eval_samples_per_prompt": 2,
            "eval_seed": 1,
            "eval_chunk": 128,
            # DiT's adaLN-Zero: modulation (hence every gate) and the output projection start at zero.
            "zero_init": (
                r"^(transformer_blocks\.norm1(_context)?|single_transformer_blocks\.norm)\.linear\.",
                r"^norm_out\.linear\.",
                r"^proj_out\.",
            ),
            "ema_decay": 0.995,
            "log_every": 50,
        }
    )
    return c
