"""slas-jax against a PyTorch / diffusers GRPO loop with DanceGRPO's structure, side by side in one run.

    python benchmarks/grpo_step.py --model unet --out benchmarks/results/unet.json

Measures, for one model of ``workloads.MODELS``, interleaved (slas-jax, PyTorch, slas-jax, ...) after
``--warmup`` rounds, best of ``--repeats``:

- rollout: images/s of B stochastic trajectories with log-probs;
- GRPO step: rollout + reward + advantages + every optimizer update over the trained transitions;
- each side's parts: the rollout alone and one loss + gradient slice alone, and the ratio of the full step to
  rollout + (trained slices) x slice (issue 22's bound: <= 1.5x for the shapes UNet);
- compile seconds of each slas-jax stage (``lower(...).compile()``, apart from the first run), each side's
  peak host memory (``ru_maxrss`` of its own process), and achieved FLOP/s as a fraction of the machine's
  measured float32 matmul peak (the faster of the two sides' 4096^2 matmuls).

Prints the tables (Markdown) and writes everything to ``--out`` as JSON. On an accelerator the same command
runs both sides in bfloat16 (see jax_side / torch_side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness import Timings, Worker, interleave, machine, table, threads
from workloads import MODELS, Workload, build_workload, config_sections, jax_spec, torch_spec

JAX = "slas-jax"
STAGES = ("matmul", "rollout", "step", "slice")


def torch_label(threads: int) -> str:
    return f"pytorch ({threads} thread{'s' if threads > 1 else ''})"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--prompts", type=int, help="prompts per step (default: the model's workload)")
    p.add_argument("--group", type=int, help="samples per prompt")
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--micro", type=int, help="micro-batch size (then one optimizer update per step)")
    p.add_argument("--repeats", type=int, default=2, help="measured rounds; the best is reported")
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not kept")
    p.add_argument(
        "--torch-threads",
        default=str(threads()),
        help="comma-separated torch.set_num_threads values, one PyTorch side each (default: the cores XLA "
        "uses; '' for the slas-jax side only)",
    )
    p.add_argument("--out", type=Path, help="JSON file to write")
    return p.parse_args(argv)


def model_flops(infos: dict[str, dict]) -> dict[str, dict[str, float]]:
    """FLOPs per stage of each side's work, as PyTorch's FlopCounterMode counts the same model's
    matmul-class ops (mm, bmm, conv, attention), the slas-jax rollout scaled to the denoiser calls it makes
    (``rollout_work_fraction``: groups sharing steps). XLA's own count (each side's info) is a lower bound:
    it counts a loop body once, and loops run inside the models too (FLUX's scanned block stacks, CPU
    attention's batch chunks). Without a PyTorch side, XLA's count."""
    reference = [side for side in infos if side != JAX]
    if not reference:
        return {JAX: infos[JAX]["flops"]}
    counted = infos[reference[0]]["flops"]
    rollout = counted["rollout"] * infos[JAX]["rollout_work_fraction"]
    jax = {**counted, "rollout": rollout, "step": counted["step"] - counted["rollout"] + rollout}
    return {JAX: jax, **{side: counted for side in reference}}


def summarize(
    workload: Workload, timings: Timings, infos: dict[str, dict], compile_s: dict
) -> dict[str, Any]:
    """The derived numbers of the tables: best seconds, images/s, ratios, parts, FLOP/s fractions."""
    best = {side: {stage: timings.best(side, stage) for stage in STAGES} for side in infos}
    peak = max(infos[side]["flops"]["matmul"] / best[side]["matmul"] for side in infos)
    jax_best = best[JAX]
    slices = infos[JAX]["trained_slices"]
    flops = model_flops(infos)
    return {
        "best_s": best,
        "images_per_s": {side: workload.batch / best[side]["rollout"] for side in infos},
        # PyTorch seconds / slas-jax seconds, per PyTorch side: > 1 means slas-jax is faster.
        "speed_ratio": {
            side: {stage: best[side][stage] / jax_best[stage] for stage in ("rollout", "step", "slice")}
            for side in infos
            if side != JAX
        },
        "matmul_peak_flops": peak,
        "model_flops": flops,
        "achieved": {
            side: {
                stage: {
                    "flops_per_s": flops[side][stage] / best[side][stage],
                    "fraction_of_peak": flops[side][stage] / best[side][stage] / peak,
                }
                for stage in ("rollout", "step")
            }
            for side in infos
        },
        # The step against what it is made of, each part timed alone: rollout + slices x one slice.
        "parts": {
            side: {
                "sum_s": best[side]["rollout"] + slices * best[side]["slice"],
                "step_over_parts": best[side]["step"]
                / (best[side]["rollout"] + slices * best[side]["slice"]),
                "update_s": best[side]["step"] - best[side]["rollout"],
            }
            for side in infos
        },
        "compile_s": compile_s,
        "first_run_s": timings.first,
        "load_average": timings.load_average,
    }


def tables(workload: Workload, summary: dict[str, Any], infos: dict[str, dict]) -> str:
    """The printed report: the side-by-side table with each side's parts and distance to peak."""
    sides = list(infos)
    others = [side for side in sides if side != JAX]
    best, ratio = summary["best_s"], summary["speed_ratio"]
    c = workload.config
    heading = (
        f"{workload.name}: {infos[JAX]['parameters'] / 1e6:.2f}M parameters, batch {workload.batch} "
        f"({c.train.prompts_per_step} prompt(s) x group {c.train.group_size}), {c.sampler.num_steps} "
        f"{c.sampler.name} steps, {workload.slices} trained (micro-batch {c.train.micro_batch_size}, timestep) "
        f"slices, {workload.updates} AdamW update(s); {infos[JAX]['dtype']}; load average "
        + " / ".join(f"{load[0]:.1f}" for load in summary["load_average"])
        + " at the rounds' starts"
    )

    compiled = "{rollout:.1f} / {step:.1f} / {slice:.1f}".format(**summary["compile_s"])

    def achieved(side: str, stage: str) -> str:
        a = summary["achieved"][side][stage]
        return f"{a['flops_per_s'] / 1e9:.1f} G ({a['fraction_of_peak']:.1%})"

    def row(label: str, values: list[Any], stage: str | None = None) -> list[Any]:
        return [label, *values, *(ratio[o][stage] if stage else None for o in others)]

    parts = summary["parts"]
    rows = [
        row("rollout (s)", [best[s]["rollout"] for s in sides], "rollout"),
        row("rollout (images/s)", [summary["images_per_s"][s] for s in sides], "rollout"),
        row("GRPO step (s)", [best[s]["step"] for s in sides], "step"),
        row("one loss+grad slice alone (s)", [best[s]["slice"] for s in sides], "slice"),
        row(f"rollout + {workload.slices} x slice (s)", [parts[s]["sum_s"] for s in sides]),
        row("step / (rollout + slices)", [parts[s]["step_over_parts"] for s in sides]),
        row("compile: rollout / step / slice (s)", [compiled, *(["-"] * len(others))]),
        row("first step after compile (s)", [summary["first_run_s"][s].get("step") for s in sides]),
        row("peak host memory (MiB)", [round(infos[s]["peak_rss_mb"]) for s in sides]),
        *(
            row(f"{stage} FLOP/s (of peak)", [achieved(s, stage) for s in sides])
            for stage in ("rollout", "step")
        ),
    ]
    header = ["", *sides, *(f"ratio vs {o}" for o in others)]
    return "\n\n".join(
        [
            heading,
            table(header, rows),
            f"ratio: PyTorch seconds / slas-jax seconds (> 1: slas-jax faster); matmul peak "
            f"{summary['matmul_peak_flops'] / 1e9:.1f} GFLOP/s float32 (the faster side's 4096^2 matmul); "
            "FLOPs: the model's matmul-class ops as PyTorch's FlopCounterMode counts them",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workload = build_workload(
        args.model, prompts=args.prompts, group=args.group, steps=args.steps, micro=args.micro
    )
    started = time.perf_counter()
    log = lambda line: print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True)  # noqa: E731
    record: dict[str, Any] = {"benchmark": "grpo_step", "model": args.model, "machine": machine()}
    log(f"building {JAX}")
    workers = [Worker(JAX, "jax_side", jax_spec(workload))]
    for n in (int(t) for t in args.torch_threads.split(",") if t.strip()):
        log(f"building {torch_label(n)}")
        workers.append(Worker(torch_label(n), "torch_side", {**torch_spec(workload), "threads": n}))
    try:
        log("compiling slas-jax")
        compile_s = workers[0].call("compile")
        log(f"compiled: {json.dumps({k: round(v, 1) for k, v in compile_s.items()})}")
        timings = interleave(workers, STAGES, repeats=args.repeats, warmup=args.warmup, log=log)
        infos = {w.label: {**w.call("info"), **w.setup} for w in workers}
    finally:
        for w in workers:
            w.close()
    summary = summarize(workload, timings, infos, compile_s)
    report = tables(workload, summary, infos)
    print("\n" + report + "\n", flush=True)
    record.update(
        {
            "settings": {"repeats": args.repeats, "warmup": args.warmup, "torch_threads": args.torch_threads},
            "workload": {
                "batch": workload.batch,
                "trained_timesteps": workload.trained_timesteps,
                "trained_slices": workload.slices,
                "optimizer_updates": workload.updates,
                "config": config_sections(workload.config),
            },
            "sides": infos,
            "runs_s": timings.runs,
            "warmup_runs_s": timings.warmup,
            "summary": summary,
            "table": report,
            "wall_s": time.perf_counter() - started,
        }
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
