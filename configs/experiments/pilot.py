"""A pilot of configs/experiments/paper_claims.py: its DanceGRPO flow cell and its SLAS UNet cell (seed 0)
for 4 steps, the fixed sets evaluated every 2 steps, to measure step and evaluation times before the grid.

    python -m slas_jax.experiments --config configs/experiments/pilot.py

Step 0 holds the compilation; steps 1 and 3 hold a fixed-set evaluation, step 2 neither.
"""

import runpy
from pathlib import Path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = runpy.run_path(str(Path(__file__).resolve().parent / "paper_claims.py"))["get_config"]()
    c.name = "pilot"
    c.out = "runs/experiments/pilot"
    c.overrides = (
        *(
            o
            for o in c.overrides
            if not o.startswith(("train.num_steps", "train.checkpoint_every", "eval.every"))
        ),
        "train.num_steps=4",
        "train.checkpoint_every=2",
        "eval.every=2",
    )
    c.blocks = (
        {
            "seed": ("0",),
            "backbone": ("flow",),
            "size": ("small",),
            "lr": ("base",),
            "method": ("dance_grpo", "slas_g1"),
        },
        {"seed": ("0",), "backbone": ("unet",), "size": ("small",), "lr": ("base",), "method": ("slas_g1",)},
    )
    return c
