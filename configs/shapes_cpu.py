"""The shapes demo: SLAS on the shapes testbed's FLUX-class flow backbone (pretrained base in
checkpoints/shapes_flow), with the pixel ground truth measured beside the training reward, in-domain and on
held-out prompt combinations.

Work in progress (issue 5): the training reward is the ground-truth partial score until the learned proxy
reward ships; then ``reward.name = "proxy"`` and the ground truth stays the judge.

python -m slas_jax.train --config configs/shapes_cpu.py
"""

import ml_collections

from slas_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.model.family = "flux"
    c.model.resolution = 32
    c.model.init_checkpoint = "checkpoints/shapes_flow"
    c.model.architecture = {
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 32,
        "num_attention_heads": 2,
        "axes_dims_rope": (8, 12, 12),
    }
    c.model.text_architecture = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    c.sampler.name = "flow_sde"
    c.sampler.num_steps = 8
    c.sampler.noise_level = 0.7
    c.sampler.shift = 3.0
    c.sampler.decode = "prediction"  # the last flow-SDE step still adds pixel noise the scorer would count
    c.advantage.method = "slas"
    c.loss.clip_range = 0.05
    c.loss.timestep_fraction = 0.5
    c.optim.learning_rate = 3e-4
    c.train.num_steps = 30
    c.train.prompts_per_step = 8
    c.train.group_size = 8
    c.train.micro_batch_size = 32
    c.train.output_dir = "runs/shapes_cpu"
    c.reward.name = "shapes"
    c.reward.options = {"kind": "partial"}
    c.data.name = "shapes"
    c.data.options = {"split": "train", "data_dir": "~/tensorflow_datasets"}
    c.eval.scorer = "shapes"
    c.eval.every = 10
    c.eval.sets = {
        "train": {"name": "shapes", "options": {"split": "train", "seed": 1}},
        "held_out": {"name": "shapes", "options": {"split": "held_out", "seed": 1}},
    }
    c.eval.num_prompts = 24
    c.eval.samples_per_prompt = 2
    c.eval.grid_prompts = 8
    return c
