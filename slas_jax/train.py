"""Command line: ``python -m slas_jax.train --config configs/X.py [--config.section.key=value ...]``.

Wiring only: config -> mesh -> prompts, reward, pipeline -> jitted GRPO step -> loop with progress bar,
JSON-lines metrics, evaluation, checkpoints and policy exports. Bad configs, missing checkpoints and bad
inputs end with one line on stderr and exit code 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags
from tqdm import tqdm

from slas_jax import grpo, parallel
from slas_jax.checkpoint import Checkpointer
from slas_jax.cli import Command, Parsed
from slas_jax.config import Config, ConfigError, describe_config, load_config
from slas_jax.data import build_prompt_source
from slas_jax.evaluate import Evaluator, save_curves, write_summary
from slas_jax.metrics import MetricsWriter, to_python
from slas_jax.pipelines import build_pipeline
from slas_jax.rewards import build_reward, check_reads
from slas_jax.weights import export_policy


def define_flags(values: flags.FlagValues) -> None:
    """The train command's own flags: joining a multi-host run."""
    flags.DEFINE_bool(
        "multihost",
        False,
        "Join a multi-host run (Cloud TPU pods: addresses are auto-detected).",
        flag_values=values,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0, when not auto-detected.", flag_values=values
    )
    flags.DEFINE_integer("num_processes", 1, "Processes in the run.", flag_values=values)
    flags.DEFINE_integer("process_id", 0, "This process's index.", flag_values=values)


COMMAND = Command(
    "train", __doc__, config_hint="configs/<name>.py", define_flags=define_flags, config_help=describe_config
)


def parse_config(argv: list[str]) -> Config:
    """Flags -> validated Config, or ConfigError with one line."""
    return load_config(COMMAND.parse(argv).config)


def save_due(step: int, every: int, final: bool) -> bool:
    """Whether something saved every ``every`` steps (0: never) is saved after ``step`` (0-based); ``final``:
    the run ends after it (last step or a stop signal), which always saves."""
    return every > 0 and (final or (step + 1) % every == 0)


def run(config: Config) -> list[dict[str, float]]:
    """Trains for ``config.train.num_steps`` steps; returns the logged metrics (also in metrics.jsonl)."""
    tc = config.train
    try:
        mesh = parallel.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from e
    prompts = build_prompt_source(config.data)
    bundle = build_pipeline(config, prompts.vocabulary)
    reward = build_reward(config.reward.name, config.reward.options)
    check_reads(
        reward.reads,
        prompts.arrays,
        f"reward {config.reward.name!r}",
        f"prompt source {config.data.name!r}",
        "data.name",
    )
    frozen = {**bundle.frozen, "reward": reward.params}
    tx = grpo.make_optimizer(config)
    state = grpo.init_train_state(bundle.params, frozen, tx, config)
    shardings = grpo.state_shardings(
        state,
        parallel.state_shardings(bundle.params, mesh),
        jax.tree.map(lambda _: parallel.replicated(mesh), frozen),
        mesh,
    )
    state = jax.device_put(state, shardings)

    def reward_fn(frozen_tree, images, batch):
        return reward.fn(frozen_tree["reward"], images, batch)

    def prepare(texts: list[str]) -> dict[str, np.ndarray]:
        extra = reward.prepare(texts) if reward.prepare is not None else {}
        return {"tokens": bundle.tokenize(texts), **extra}

    def make_batch(start: int) -> dict[str, np.ndarray]:
        texts, arrays = prompts.batch(start, tc.prompts_per_step)
        return {**prepare(texts), **arrays}

    out_dir = Path(tc.output_dir)
    evaluator = Evaluator(config, bundle, prepare) if config.eval.scorer else None
    step_fn = grpo.make_train_step(
        bundle.pipeline, reward_fn, tx, config, mesh, return_samples=evaluator is not None
    )
    first = make_batch(0)
    train_step = grpo.jit_train_step(step_fn, state, shardings, first, mesh)
    checkpointer = Checkpointer(out_dir / "checkpoints") if tc.checkpoint_every else None
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(state, shardings)
        tqdm.write(f"resumed from step {int(state.step)} in {out_dir}/checkpoints")
    writer = MetricsWriter(out_dir / "metrics.jsonl", start_step=int(state.step))
    before, eval_images = {}, {}
    if evaluator is not None:
        before, eval_images = evaluator.evaluate(state.params, state.frozen)
        evaluator.grid(
            eval_images, out_dir / "samples_before.png", f"before training (step {int(state.step)})"
        )
    base_key = jax.random.PRNGKey(tc.seed)
    history = []
    stop = _PreemptionFlag()
    started = time.perf_counter()
    bar = tqdm(range(int(state.step), tc.num_steps), desc="GRPO", unit="step", dynamic_ncols=True)
    for step in bar:
        start = time.perf_counter()
        batch = make_batch(int(state.data_index))
        state, metrics = train_step(state, batch, jax.random.fold_in(base_key, step))
        images = metrics.pop("samples/images", None)
        metrics.pop("samples/rewards", None)
        record = to_python(metrics)
        if not np.isfinite(record["policy_loss"]):
            raise FloatingPointError(
                f"loss became {record['policy_loss']} at step {step}; lower optim.learning_rate"
            )
        last = step == tc.num_steps - 1
        if evaluator is not None:
            record.update(evaluator.score_rollout(np.asarray(images), batch, tc.group_size))
            if (step + 1) % config.eval.every == 0 or last or stop.raised:
                scores, eval_images = evaluator.evaluate(state.params, state.frozen)
                record.update(scores)
        record["step_time_s"] = time.perf_counter() - start
        history.append(record)
        if step % tc.log_every == 0 or last:
            writer.write(step, record)
        postfix = {"reward": f"{record['reward_mean']:.4f}"}
        if "truth/strict" in record:
            postfix["truth"] = f"{record['truth/strict']:.2f}"
        bar.set_postfix(postfix)
        final = last or stop.raised
        if checkpointer is not None and save_due(step, tc.checkpoint_every, final):
            checkpointer.save(state, {"step": step + 1})
        if save_due(step, tc.export_every, final):
            export_policy(
                out_dir / "policy" / f"step_{step + 1}",
                config,
                state.params,
                state.frozen,
                {"step": step + 1, "method": config.advantage.method, "reward": config.reward.name},
                getattr(bundle.tokenize, "words", ()),
            )
        if stop.raised:
            tqdm.write(f"stopped by signal after step {step + 1}; rerun the same command to resume")
            break
    if evaluator is not None and history:
        # The last step (or the step a signal stopped at) was evaluated: its images are the final state's.
        after = {k: v for k, v in history[-1].items() if "/" in k and not k.startswith("truth/")}
        evaluator.grid(
            eval_images,
            out_dir / "samples_after.png",
            f"after {int(state.step)} GRPO steps ({config.advantage.method})",
        )
        save_curves(
            history, before, out_dir / "curves.png", f"{config.advantage.method}: reward {config.reward.name}"
        )
        write_summary(out_dir / "summary.md", config, history, before, after, time.perf_counter() - started)
    return history


class _PreemptionFlag:
    """Turns SIGTERM (what a preempted TPU VM / Kubernetes pod receives) into a checked flag, so the loop
    finishes the step in flight, saves and exits instead of dying mid-write."""

    def __init__(self) -> None:
        self.raised = False
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, *_: object) -> None:
        self.raised = True


def train_command(parsed: Parsed) -> str:
    """The train command's body: validated config -> (multi-host join) -> run -> summary line."""
    config = load_config(parsed.config)
    if parsed.flags["multihost"].value:
        parallel.initialize_distributed(
            parsed.flags["coordinator_address"].value,
            parsed.flags["num_processes"].value,
            parsed.flags["process_id"].value,
        )
    history = run(config)
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    return f"done: {len(history)} steps, mean reward {first:.4f} -> {last:.4f}; metrics in {config.train.output_dir}"


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(train_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
