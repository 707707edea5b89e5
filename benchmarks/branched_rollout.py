"""Branched rollouts on the shapes demo: the rollout with the group branching at the SDE window against every
sample through every step, side by side (interleaved, best of ``--repeats``), and the share of the whole
GRPO step that the saving is.

    python benchmarks/branched_rollout.py --out benchmarks/results/branched_rollout.json
"""

from __future__ import annotations

import argparse
import json
import runpy
import time
from pathlib import Path

import jax
import numpy as np

from slas_jax import grpo, train
from slas_jax.config import load_config
from slas_jax.data import build_prompt_source
from slas_jax.rollout import sample_trajectories, shared_steps

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="", help="configs/shapes_cpu.py variant (default: the demo)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = load_config(runpy.run_path(str(ROOT / "configs" / "shapes_cpu.py"))["get_config"](args.variant))
    tc, sc = config.train, config.sampler
    prompts = build_prompt_source(config.data)
    bundle, reward = train.load_models(config, prompts.vocabulary)
    pipeline = bundle.pipeline
    texts, _ = prompts.batch(0, tc.prompts_per_step)
    batch = {"tokens": jax.numpy.asarray(bundle.tokenize(texts))}
    cond, uncond = jax.jit(pipeline.encode)(bundle.frozen, batch)

    def make(branch: bool):
        def run(params, key):
            traj = sample_trajectories(
                pipeline.denoise,
                params,
                cond,
                uncond,
                key,
                sampler=pipeline.sampler,
                latent_shape=pipeline.latent_shape,
                group_size=tc.group_size,
                guidance_scale=sc.guidance_scale,
                same_noise_in_group=sc.same_noise_in_group,
                branch_groups=branch,
            )
            return traj.final, traj.log_probs

        return jax.jit(run)

    key = jax.random.PRNGKey(0)
    sides = {"branched": make(True), "every sample, every step": make(False)}
    outputs = {name: jax.block_until_ready(f(bundle.params, key)) for name, f in sides.items()}
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(args.repeats):
        for name, f in sides.items():
            start = time.perf_counter()
            jax.block_until_ready(f(bundle.params, key))
            best[name] = min(best[name], time.perf_counter() - start)
    final_diff = float(np.max(np.abs(np.subtract(*[np.asarray(o[0]) for o in outputs.values()]))))
    log_prob_diff = float(np.max(np.abs(np.subtract(*[np.asarray(o[1]) for o in outputs.values()]))))

    state_step = grpo_step_seconds(config, bundle, reward, prompts, repeats=2)
    shared = shared_steps(pipeline.sampler, tc.group_size, same_noise_in_group=sc.same_noise_in_group)
    result = {
        "variant": args.variant or "demo",
        "batch": f"{tc.prompts_per_step} prompts x group {tc.group_size}",
        "steps": pipeline.sampler.num_steps,
        "shared_steps": shared,
        "rollout_s": best,
        "speedup": best["every sample, every step"] / best["branched"],
        "grpo_step_s_branched": state_step,
        "step_saving_fraction": (best["every sample, every step"] - best["branched"]) / state_step,
        "max_abs_diff": {"final latents": final_diff, "log_probs": log_prob_diff},
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"shapes {result['variant']}: {result['batch']}, {result['steps']} steps, {shared} shared before the window"
    )
    print("| rollout | seconds |")
    print("| --- | --- |")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.3f} |")
    print(
        f"speed-up {result['speedup']:.2f}x; GRPO step (branched) {state_step:.2f} s, so the saving is "
        f"{100 * result['step_saving_fraction']:.1f}% of a step; max |diff| final {final_diff:.1e}, "
        f"log-prob {log_prob_diff:.1e}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


def grpo_step_seconds(config, bundle, reward, prompts, *, repeats: int) -> float:
    """Best wall time of the run's jitted GRPO step (rollout, reward, advantages, update) after warm-up."""
    tx = grpo.make_optimizer(config)
    frozen = {**bundle.frozen, "reward": reward.params}
    state = grpo.init_train_state(bundle.params, frozen, tx, config)
    texts, arrays = prompts.batch(0, config.train.prompts_per_step)
    extra = reward.prepare(texts) if reward.prepare is not None else {}
    batch = {"tokens": bundle.tokenize(texts), **extra, **arrays}
    step = jax.jit(
        grpo.make_train_step(
            bundle.pipeline, lambda tree, images, b: reward.fn(tree["reward"], images, b), tx, config
        )
    )
    state, _ = jax.block_until_ready(step(state, batch, jax.random.PRNGKey(1)))
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(step(state, batch, jax.random.PRNGKey(2 + r)))
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
