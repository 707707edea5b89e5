"""The smallest real grid, for the test suite: the brightness smoke task (configs/brightness_cpu.py) shrunk
to a 3-step sampler and 2 prompts x 4 images, 2 methods x 2 seeds x 12 steps, a checkpoint every 3 steps.

    python -m slas_jax.experiments --config configs/experiments/tiny_brightness.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiny_brightness"
    c.base = "configs/brightness_cpu.py"
    c.out = "runs/experiments/tiny_brightness"
    c.overrides = (
        "train.num_steps=12",
        "train.checkpoint_every=3",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "train.micro_batch_size=8",
        "train.tensorboard=False",
        "sampler.num_steps=3",
    )
    c.axes = {
        "method": {
            "dance_grpo": {"overrides": ("advantage.method=dance_grpo", "advantage.eps=1e-8")},
            "slas": {"overrides": ("advantage.method=slas", "advantage.gamma=1.0")},
        },
        "seed": {"0": {"overrides": ("train.seed=0",)}, "1": {"overrides": ("train.seed=1",)}},
    }
    c.order = ("method", "seed")
    c.blocks = ()
    c.report = {"control": "dance_grpo", "treatments": ("slas",), "target_reward": None}
    return c
