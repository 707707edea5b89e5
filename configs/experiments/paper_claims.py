"""The paper's claims on the shapes testbed: SLAS against every baseline, over seeds, on the learned proxy
reward with the pixel ground truth beside it (configs/shapes_cpu.py: flow backbone, proxy reward).

    python -m slas_jax.experiments --config configs/experiments/paper_claims.py --max-minutes 240

Blocks (36 cells of 150 steps):
- every method on the flow backbone at the demo's learning rate (1e-4): DanceGRPO with its eps 1e-8,
  mean-only, Flow-GRPO with the batch std and with the per-prompt std (Flow-GRPO's eps 1e-4), SLAS at
  gamma 0.5, 1 and 2 (normalised after shaping), and at gamma 1 normalised before shaping; 3 seeds;
- a higher learning rate (3e-4) for DanceGRPO and SLAS (gamma 1), where reward hacking should show sooner;
- the UNet backbone for DanceGRPO and SLAS (gamma 1).

Cost, from the pilot (configs/experiments/pilot.py, 4 steps per cell, the 2 cores shared at load 8-10):
a flow step 15-18 s, a UNet step 21 s, a fixed-set evaluation (2 x 256 images) 85-105 s on flow and 50-75 s
on the UNet, start-up and compilation 3-4 min and the final benchmark 1-2 min per cell. A 150-step cell is
then about an hour, and the grid about 36 hours: some nine 4-hour sittings, not a few. The evaluations
are a fifth of it (``eval.every=50`` would save 3 of the 7).

Claim 3 (model scaling) needs the flow backbone at a second size; no larger pretrained shapes flow base
exists yet, so the grid has no size axis and the report says the claim is not tested. A seed is the
training run's seed (rollout noise); the evaluation's prompts and noise are the same in every cell.
"""

import ml_collections

SEEDS = ("0", "1", "2")
METHODS = {
    "dance_grpo": ("advantage.method=dance_grpo", "advantage.eps=1e-8"),
    "mean_only": ("advantage.method=mean_only",),
    "flow_grpo": ("advantage.method=flow_grpo", "advantage.eps=1e-4"),
    "flow_grpo_per_prompt": ("advantage.method=flow_grpo_per_prompt", "advantage.eps=1e-4"),
    "slas_g0_5": ("advantage.method=slas", "advantage.gamma=0.5"),
    "slas_g1": ("advantage.method=slas", "advantage.gamma=1.0"),
    "slas_g2": ("advantage.method=slas", "advantage.gamma=2.0"),
    "slas_g1_before": ("advantage.method=slas", "advantage.gamma=1.0", "advantage.slas_normalize=before"),
}
HEADLINE = ("dance_grpo", "slas_g1")
BLOCKS = (
    {"backbone": ("flow",), "size": ("small",), "lr": ("base",)},
    {"backbone": ("flow",), "size": ("small",), "lr": ("high",), "method": HEADLINE},
    {"backbone": ("unet",), "size": ("small",), "lr": ("base",), "method": HEADLINE},
    {"backbone": ("flow",), "size": ("large",), "lr": ("base",), "method": HEADLINE},
)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "paper_claims"
    c.base = "configs/shapes_cpu.py"
    c.out = "runs/experiments/paper_claims"
    c.report_dir = "docs/results/paper_claims"
    # 150 steps of 4 prompts x 8 samples (hacking needs time to show; half the demo's prompts per step so
    # that the grid fits a few sittings), the fixed sets (64 prompts x 2 samples each) evaluated every 30
    # steps (6 points of the gap curve with the untrained model's), a checkpoint every 10 steps (at most 10
    # steps redone after a stop). The last evaluation's per-prompt scores (eval_scores.jsonl) give the
    # intervals over prompts and the categories, so no separate final benchmark runs.
    c.overrides = (
        "train.num_steps=150",
        "train.prompts_per_step=4",
        "train.checkpoint_every=10",
        "eval.every=30",
        "eval.num_prompts=64",
        "eval.samples_per_prompt=2",
        "train.tensorboard=False",
    )
    c.final_eval = False
    c.axes = {
        "method": {label: {"overrides": overrides} for label, overrides in METHODS.items()},
        "backbone": {"flow": {"variant": "flow"}, "unet": {"variant": "unet"}},
        "size": {"small": {}, "large": {"variant": "large"}},
        "lr": {
            "base": {"overrides": ("optim.learning_rate=1e-4",)},
            "high": {"overrides": ("optim.learning_rate=3e-4",)},
        },
        "seed": {seed: {"overrides": (f"train.seed={seed}",)} for seed in SEEDS},
    }
    c.order = ("seed", "backbone", "size", "lr", "method")
    # Seed-major: a grid worked off in sittings has every block's first seed before any second seed.
    c.blocks = tuple({**block, "seed": (seed,)} for seed in SEEDS for block in BLOCKS)
    c.report = {
        "control": "dance_grpo",
        "treatments": tuple(label for label in METHODS if label.startswith("slas")),
        "target_reward": None,
        "window": 5,
    }
    return c
