"""The shapes demo, the project's first run: SLAS on the shapes testbed's FLUX-class flow backbone (pretrained
base in checkpoints/shapes_flow) against the learned proxy reward (checkpoints/shapes_proxy, the testbed's
HPS), with the pixel ground truth measured beside it: on every rollout, and every ``eval.every`` steps on
fixed training and held-out (out-of-domain) prompt sets.

    python -m slas_jax.train --config configs/shapes_cpu.py

Variants name a backbone, a reward and a method after a colon, in any order (defaults flow, proxy, slas):

    python -m slas_jax.train --config configs/shapes_cpu.py:dance_grpo
    python -m slas_jax.train --config configs/shapes_cpu.py:unet,truth,mean_only

backbone: flow | unet; reward: proxy | truth (the ground-truth partial score); method: slas | dance_grpo |
mean_only | flow_grpo; ``large``: the backbone's larger base model (flow: checkpoints/shapes_flow_large). The
model and sampler sections come from the base model's pretraining config, so the RL sampler is the one the
base model was evaluated with.
"""

import runpy
from pathlib import Path

import ml_collections

from slas_jax.config import defaults

HERE = Path(__file__).resolve().parent
# Per backbone: which transitions draw noise and train, and which parameters train (docs/testbed.md has the
# measurements; the UNet's settings predate the window and were not re-measured with it).
RL_SETTINGS = {
    "flow": {
        "sde_window": (3, 5),
        "exclude_first_steps": 3,
        "exclude_last_steps": 3,
        "trainable": (r"^(single_)?transformer_blocks\.",),
    },
    "unet": {"sde_window": None, "exclude_first_steps": 3, "exclude_last_steps": 1, "trainable": ()},
}
BACKBONES = {
    "flow": ("shapes_pretrain_flow.py", "checkpoints/shapes_flow"),
    "unet": ("shapes_pretrain_unet.py", "checkpoints/shapes_unet"),
}
# The larger base of a backbone (``large``), for the model-scaling comparison: the same RL settings.
LARGE = {"flow": ("shapes_pretrain_flow_large.py", "checkpoints/shapes_flow_large")}
REWARDS = {
    "proxy": ("proxy", {"checkpoint": "checkpoints/shapes_proxy"}),
    "truth": ("shapes", {"kind": "partial"}),
}
METHODS = ("slas", "dance_grpo", "mean_only", "flow_grpo")


def parse_variant(variant: str) -> dict[str, str]:
    """ "unet,truth" -> {"backbone": "unet", "reward": "truth", "method": "slas"} (with "size": "large" for
    the word ``large``); ValueError naming the choices for an unknown word or a backbone without a larger
    base."""
    chosen = {"backbone": "flow", "reward": "proxy", "method": "slas"}
    for word in filter(None, (w.strip() for w in variant.split(","))):
        if word == "large":
            chosen["size"] = "large"
        elif word in BACKBONES:
            chosen["backbone"] = word
        elif word in REWARDS:
            chosen["reward"] = word
        elif word in METHODS:
            chosen["method"] = word
        else:
            raise ValueError(
                f"unknown shapes_cpu variant {word!r}: choose from backbones {sorted(BACKBONES)}, "
                f"rewards {sorted(REWARDS)}, methods {list(METHODS)}, size 'large'"
            )
    if chosen.get("size") and chosen["backbone"] not in LARGE:
        raise ValueError(f"shapes_cpu variant 'large': only {sorted(LARGE)} has a larger base model")
    return chosen


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    chosen = parse_variant(variant)
    pretrain_file, checkpoint = (LARGE if chosen.get("size") else BACKBONES)[chosen["backbone"]]
    base = runpy.run_path(str(HERE / pretrain_file))["get_config"]()
    c = defaults()
    c.model.update(base.model.to_dict())
    c.model.init_checkpoint = checkpoint
    c.sampler.update(base.sampler.to_dict())
    # One initial noise per group (DanceGRPO): group differences then come from the sampler's own noise,
    # which the log-probabilities cover, not from x_T. The KL to the pretrained model (in loss.kl_form's
    # default "transition" form) stops the drift that noisy small-batch updates cause (without both, 30 steps
    # left the ground truth flat or lower).
    c.sampler.same_noise_in_group = True
    c.loss.kl_beta = 0.04
    c.advantage.method = chosen["method"]
    c.loss.clip_range = 0.05
    # Noise only at steps 3 and 4 of 8 (Flow-GRPO-Fast), and the loss trains exactly those: the earlier steps'
    # noise barely changes the outcome, so their log-prob gradients would be noise, and with the window every
    # difference inside a group comes from the trained transitions. The flow base decodes its last clean
    # estimate, which the last transition never reaches. Only the transformer blocks train: the output
    # projection's biases are shared by every 2x2 patch, and Adam turned their noisy gradients into a
    # checkerboard over the backgrounds.
    rl = RL_SETTINGS[chosen["backbone"]]
    c.sampler.sde_window = rl["sde_window"]
    c.loss.exclude_first_steps = rl["exclude_first_steps"]
    c.loss.exclude_last_steps = rl["exclude_last_steps"]
    c.loss.timestep_fraction = 1.0
    c.optim.trainable = rl["trainable"]
    c.optim.learning_rate = 1e-4
    c.train.num_steps = 40
    c.train.prompts_per_step = 8
    c.train.group_size = 8
    c.train.micro_batch_size = 32
    default = variant.strip() == ""
    c.train.output_dir = "runs/shapes_cpu" if default else "runs/shapes_" + "_".join(chosen.values())
    c.reward.name, c.reward.options = REWARDS[chosen["reward"]]
    c.data.name = "shapes"
    c.data.options = {"split": "train", "data_dir": "~/tensorflow_datasets"}
    c.eval.scorer = "shapes"
    c.eval.every = 10
    c.eval.sets = {
        "train": {"name": "shapes", "options": {"split": "train", "seed": 1}},
        "held_out": {"name": "shapes", "options": {"split": "held_out", "seed": 1}},
    }
    # 256 images per set, the same noise at every evaluation: a paired before / after comparison (32 x 4
    # swung by +-0.03 between evaluations, about the size of the change it was measuring).
    c.eval.num_prompts = 64
    c.eval.samples_per_prompt = 4
    c.eval.grid_prompts = 8
    return c
