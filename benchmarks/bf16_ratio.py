"""The ratio error bfloat16 compute introduces: one GRPO step of a testbed model in float32 and in bfloat16
(``model.dtype``; parameters stay float32), and how far the first update's importance ratios stray from 1.

At the first update the policy is the one that sampled, so every ratio exp(log p_new - log p_old) would be
exactly 1 in exact arithmetic; re-scoring a transition in micro-batches of another size rounds differently,
and bfloat16 rounds coarsely. A ratio error near the clip range (``loss.clip_range``) would clip samples
for no reason, so this is what decides where bfloat16 may be used.

    python benchmarks/bf16_ratio.py --backbone flow --out benchmarks/results/bf16_ratio_flow.json
"""

from __future__ import annotations

import argparse
import json
import runpy
import tempfile
import time
from pathlib import Path

import jax

from slas_jax import train
from slas_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("first_ratio_max_dev", "ratio_max_dev", "clip_fraction", "approx_kl", "reward_mean")


def one_step(backbone: str, dtype: str, seed: int) -> dict[str, float]:
    """The metrics of step 0 of configs/shapes_cpu.py:<backbone> with compute dtype ``dtype``."""
    config = runpy.run_path(str(ROOT / "configs" / "shapes_cpu.py"))["get_config"](
        "" if backbone == "flow" else backbone
    )
    config.model.dtype = dtype
    config.train.num_steps = 1
    config.train.seed = seed
    config.eval.scorer = None
    config.eval.sets = {}
    config.eval.rewards = {}
    config.train.checkpoint_every = 0
    with tempfile.TemporaryDirectory() as out:
        config.train.output_dir = out
        start = time.perf_counter()
        (record,) = train.run(load_config(config))
    return {**{k: float(record[k]) for k in KEYS}, "step_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=("flow", "unet"), default="flow")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = runpy.run_path(str(ROOT / "configs" / "shapes_cpu.py"))["get_config"]("")
    rows = [
        {"dtype": dtype, "seed": seed, **one_step(args.backbone, dtype, seed)}
        for seed in range(args.seeds)
        for dtype in ("float32", "bfloat16")
    ]
    print(f"{args.backbone}: clip range {config.loss.clip_range}, backend {jax.default_backend()}")
    print(
        "| dtype | seed | first-update max abs(ratio - 1) | step max abs(ratio - 1) | clip fraction | step s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['dtype']} | {r['seed']} | {r['first_ratio_max_dev']:.2e} | {r['ratio_max_dev']:.2e} | "
            f"{r['clip_fraction']:.4f} | {r['step_s']:.1f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"backbone": args.backbone, "backend": jax.default_backend(), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
