"""The paper's claims on the shapes testbed: SLAS against every baseline, over seeds, on the learned proxy
reward with the pixel ground truth beside it (configs/shapes_cpu.py: flow backbone, proxy reward).

    python -m slas_jax.experiments --config configs/experiments/paper_claims.py --max-minutes 90   # repeat

(``--start-within 60`` instead ends the sitting after the cell running at 60 minutes, with nothing half
done), and commit what a sitting finished (the report, its plots, the grid's records and the finished cells'
folders; their checkpoints are git-ignored, and a half-done cell is left out, since a later sitting on a
fresh clone could not resume it without its checkpoints):

    d=docs/results/paper_claims; git add $d/report.md $d/*.png $d/samples $d/runs/grid.json \
      $d/runs/sittings.jsonl $(dirname $d/runs/*/done.json)

Blocks (42 cells of 150 steps, 3 seeds each; DanceGRPO and SLAS (gamma 1) on the flow backbone over their
3 seeds first, then seed 0 of every block before any seed 1):
- every method on the flow backbone at the demo's learning rate (1e-4): DanceGRPO with its eps 1e-8,
  mean-only, Flow-GRPO with the batch std and with the per-prompt std (Flow-GRPO's eps 1e-4), SLAS at
  gamma 0.5, 1 and 2 (normalised after shaping), and at gamma 1 normalised before shaping;
- a higher learning rate (3e-4) for DanceGRPO and SLAS (gamma 1), where reward hacking should show sooner;
- the UNet backbone for DanceGRPO and SLAS (gamma 1);
- the larger flow base (checkpoints/shapes_flow_large, twice the depth: configs/shapes_pretrain_flow_large.py)
  for DanceGRPO and SLAS (gamma 1): claim 3, model scaling.

Cost, from the pilot (configs/experiments/pilot.py: 4 steps per cell at these settings, one cell at a time
beside the larger base's pretraining on the other core): a flow step 4.7-5.0 s, a UNet step 11.5 s, a
fixed-set evaluation (2 x 128 images) 18-20 s on flow and 26-29 s on the UNet, the first step (compiling)
33-42 s. A flow cell is then about 15 minutes, a UNet cell about 32, a large flow cell about 30 (twice the
flow model's compute, estimated): some 14 hours one cell at a time, about five 3-hour sittings. (At the
demo's 8 prompts per step a flow step took 5.8 s with the 2 cores to itself.) A seed is the training run's seed (rollout noise); the
evaluation's prompts and noise are the same in every cell.
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
    # The run folders are committed beside the report (their checkpoints and the compile cache are
    # git-ignored), so that a grid worked off over sittings on different machines keeps its finished cells.
    c.out = "docs/results/paper_claims/runs"
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
    # The headline comparison over all its seeds first (the first sittings give a tested claim), then
    # seed-major: every block's first seed before any second seed.
    headline = {**BLOCKS[0], "method": HEADLINE}
    c.blocks = (headline, *({**block, "seed": (seed,)} for seed in SEEDS for block in BLOCKS))
    c.report = {
        "control": "dance_grpo",
        "treatments": tuple(label for label in METHODS if label.startswith("slas")),
        "target_reward": None,
        # 15 steps: one step's mean rollout reward (4 prompts) deviates from its 15-step average by 0.10 (std,
        # the first cell of this grid).
        "window": 15,
    }
    return c
