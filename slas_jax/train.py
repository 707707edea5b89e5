"""Command line: ``python -m slas_jax.train --config configs/X.py [--config.section.key=value ...]``.

Wiring only: config -> mesh -> prompts, reward, pipeline -> jitted GRPO step -> loop with progress bar,
JSON-lines metrics, evaluation, checkpoints and policy exports. Bad configs, missing checkpoints and bad
inputs end with one line on stderr and exit code 2; ``--verbose`` shows the traceback instead.

Rerunning a command resumes its run (``slas_jax.resume``: from the newest intact checkpoint of the same
config; a finished run is left as it is, exit 0). SIGTERM and SIGINT (Ctrl-C) finish the step in flight, save
a checkpoint (even with ``train.checkpoint_every=0``) and exit with ``cli.EXIT_STOPPED`` (75); a second
signal stops at once without saving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from slas_jax import grpo, parallel, placement
from slas_jax.checkpoint import Checkpointer, as_path
from slas_jax.cli import (
    EXIT_STOPPED,
    USER_ERRORS,
    Command,
    Exit,
    Parsed,
    StopSignals,
    define_multihost_flags,
    one_line,
    warn,
)
from slas_jax.config import MIXED_REWARD, Config, ConfigError, describe_config, json_ready, load_config
from slas_jax.data import build_prompt_source, load_rows
from slas_jax.errors import RewardError
from slas_jax.evaluate import Evaluator, save_curves, write_summary
from slas_jax.evaluate.fixed_sets import evaluates
from slas_jax.metrics import JsonLines, MetricsWriter, open_metrics, to_python
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.pipelines.export import diffusers_source
from slas_jax.resume import (
    EVAL_SCORES_FILE,
    FINGERPRINT,
    HISTORY_FILE,
    OVERRIDES,
    SUMMARY_FILE,
    Resume,
    fingerprint,
    history_records,
    load_before,
    plan_resume,
    save_before,
)
from slas_jax.rewards import Reward, build_reward, check_reads
from slas_jax.rewards.host import HostScoredStep, check_host_layout
from slas_jax.rewards.mix import build_mixed_reward
from slas_jax.weights import export_policy

COMMAND = Command(
    "train",
    __doc__,
    config_hint="configs/<name>.py",
    define_flags=define_multihost_flags,
    config_help=describe_config,
)


def parse_config(argv: list[str]) -> Config:
    """Flags -> validated Config, or ConfigError with one line."""
    return load_config(COMMAND.parse(argv).config)


def save_due(step: int, every: int, final: bool) -> bool:
    """Whether something saved every ``every`` steps (0: never) is saved after ``step`` (0-based); ``final``:
    the run ends after it (last step or a stop signal), which always saves."""
    return every > 0 and (final or (step + 1) % every == 0)


def load_models(
    config: Config, vocabulary: Sequence[str], mesh: Mesh | None = None
) -> tuple[PipelineBundle, Reward]:
    """The pipeline (``vocabulary``: the prompt source's words; a checkpoint's weights read straight onto
    their shardings on ``mesh``) and the training reward. Both are tried, so that a run missing the weights
    of either names everything it lacks in one error."""
    problems: list[BaseException] = []
    bundle = reward = None
    place = (
        None
        if mesh is None
        else (lambda abstract: placement.tree_shardings(abstract, mesh, config.mesh.rules))
    )
    try:
        bundle = build_pipeline(config, vocabulary, place=place)
    except USER_ERRORS as e:
        problems.append(e)
    try:
        reward = (
            build_mixed_reward(config.reward)
            if config.reward.name == MIXED_REWARD
            else build_reward(config.reward.name, config.reward.options)
        )
    except USER_ERRORS as e:
        problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConversionError(
            f"the backbone: {one_line(problems[0])}; and the reward: {one_line(problems[1])}"
        )
    return bundle, reward


CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Outcome:
    """How a train command ended. history: every step's record of the whole run (steps of earlier, resumed
    processes included); finished: the line saying the run had been finished before (nothing was done);
    stopped: the line saying a signal stopped it, and where it was saved."""

    history: list[dict[str, float]]
    finished: str = ""
    stopped: str = ""


def run(config: Config) -> list[dict[str, float]]:
    """Trains for ``config.train.num_steps`` steps (resuming the run in ``train.output_dir``); returns every
    step's record (metrics.jsonl holds those of every ``train.log_every``-th step)."""
    return train(config).history


def train(config: Config) -> Outcome:
    """Runs, resumes or leaves alone (finished) the run of ``config`` in ``train.output_dir``."""
    tc = config.train
    checkpointer = Checkpointer(
        as_path(tc.output_dir) / CHECKPOINTS,
        keep=tc.keep_checkpoints,
        best_metric=tc.keep_best_metric,
        best_mode=tc.keep_best_mode,
    )
    try:
        resume = plan_resume(config, checkpointer, tc.output_dir)
        for line in resume.warnings:
            warn(line)
        if resume.finished:
            return Outcome(history_records(tc.output_dir), finished=resume.line)
        with StopSignals() as stop:
            return _train(config, checkpointer, resume, stop)
    finally:
        checkpointer.close()  # the last save written and sealed, also when the run failed


def _train(config: Config, checkpointer: Checkpointer, resume: Resume, stop: StopSignals) -> Outcome:
    tc = config.train
    try:
        mesh = parallel.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from e
    primary = parallel.is_primary()  # one writer of the run folder, TensorBoard and W&B log, not one per host
    prompts = build_prompt_source(config.data)
    bundle, reward = load_models(config, prompts.vocabulary, mesh)
    if tc.export_every and config.model.checkpoint:
        diffusers_source(config.model.checkpoint)  # the policy exports need it: refused now, not at step N
    check_reads(
        reward.reads,
        prompts.arrays,
        f"reward {config.reward.name!r}",
        f"prompt source {config.data.name!r}",
        "data.name",
    )
    frozen, frozen_shardings = placement.place_frozen(
        {**bundle.frozen, "reward": reward.params}, config.model.frozen_dtype, mesh, config.mesh.rules
    )
    tx = grpo.make_optimizer(config)
    if primary and (report := parallel.replication_report(bundle.params, mesh, config.mesh.rules)):
        tqdm.write(report)
    state, shardings = placement.init_state(
        bundle.params, frozen, tx, config, mesh, frozen_shardings, config.mesh.rules
    )

    def prepare(texts: list[str]) -> dict[str, np.ndarray]:
        extra = reward.prepare(texts) if reward.prepare is not None else {}
        return {"tokens": bundle.tokenize(texts), **extra}

    # Each process loads only the rows of the prompt batch its devices hold, unless the host reads every
    # prompt of the step: a host reward (its chunks cut the batch differently) or a rollout scorer.
    whole = reward.host is not None or bool(config.eval.scorer)
    rows = [(0, tc.prompts_per_step)] if whole else parallel.process_rows(mesh, tc.prompts_per_step)
    if jax.process_count() > 1:
        spans = ", ".join(f"{start}-{stop - 1}" for start, stop in rows)
        tqdm.write(
            f"{parallel.process_prefix()}{jax.local_device_count()} of {jax.device_count()} devices; loads "
            f"prompts {spans} of each batch of {tc.prompts_per_step}"
        )

    def make_batch(start: int) -> tuple[list[str], dict[str, np.ndarray]]:
        """This process's rows of the batch at stream position ``start``: prompts and host arrays."""
        texts, arrays = load_rows(prompts, start, rows)
        return texts, {**prepare(texts), **arrays}

    out_dir = Path(tc.output_dir)
    evaluator = Evaluator(config, bundle, prepare, reward) if evaluates(config, reward) else None
    shapes = {
        name: jax.ShapeDtypeStruct((tc.prompts_per_step, *np.shape(v)[1:]), np.asarray(v).dtype)
        for name, v in make_batch(0)[1].items()
    }
    train_step = build_step(config, bundle.pipeline, reward, tx, state, shardings, shapes, mesh)
    host_step = train_step if isinstance(train_step, HostScoredStep) else None
    if resume.step:
        state, _ = checkpointer.restore(state, shardings, resume.step)
        tqdm.write(
            f"{parallel.process_prefix()}resumed from step {int(state.step)} in {checkpointer.directory}"
        )
    writer = (
        open_metrics(
            out_dir,
            int(state.step),
            tensorboard=tc.tensorboard,
            wandb_project=tc.wandb_project,
            config=json_ready(config),
        )
        if primary
        else MetricsWriter([])
    )
    steps_log = JsonLines(out_dir / HISTORY_FILE, int(state.step)) if primary else None
    # Per-prompt scores of each fixed-set evaluation, keyed by the steps trained before it (0: the untrained
    # model); a resumed run keeps those of the steps its checkpoint holds.
    eval_log = (
        JsonLines(out_dir / EVAL_SCORES_FILE, int(state.step) + 1 if resume.step else 0)
        if primary and evaluator is not None
        else None
    )
    history = history_records(out_dir)
    before, eval_images = {}, {}
    # A resumed run keeps the first evaluation's scores and baselines: its gaps and reports span the whole run.
    kept = load_before(out_dir) if evaluator is not None and resume.step else None
    if kept is not None:
        before, evaluator.baselines = kept
    elif evaluator is not None:
        before, per_prompt, eval_images = evaluator.evaluate(state.params, state.frozen)
        if eval_log is not None:
            eval_log.write(int(state.step), per_prompt)
        if primary:
            evaluator.grid(
                eval_images, out_dir / "samples_before.png", f"before training (step {int(state.step)})"
            )
            save_before(out_dir, before, evaluator.baselines)
    base_key = jax.random.PRNGKey(tc.seed)
    saved_config = {FINGERPRINT: fingerprint(config), OVERRIDES: resume.overrides}
    started = time.perf_counter()
    bar = tqdm(
        range(int(state.step), tc.num_steps),
        desc="GRPO",
        unit="step",
        dynamic_ncols=True,
        disable=not primary,
    )
    tracing = False
    for step in bar:
        start = time.perf_counter()
        if tc.profile_steps is not None and step == tc.profile_steps[0]:
            jax.profiler.start_trace(str(out_dir / "profile"))
            tracing = True
        texts, batch = make_batch(int(state.data_index))
        state, metrics = train_step(state, batch, jax.random.fold_in(base_key, step), texts)
        images = metrics.pop("samples/images", None)
        metrics.pop("samples/rewards", None)
        record = to_python(metrics)
        if record["reward_nonfinite"] and config.reward.on_failure == "error":
            raise RewardError(nonfinite_line(config, record, step, host_step.failures if host_step else ()))
        if not np.isfinite(record["policy_loss"]):
            raise FloatingPointError(
                f"loss became {record['policy_loss']} at step {step}; lower optim.learning_rate"
            )
        last = step == tc.num_steps - 1
        if evaluator is not None:
            record.update(evaluator.score_rollout(np.asarray(images), batch, tc.group_size))
            if (step + 1) % config.eval.every == 0 or last:
                scores, per_prompt, eval_images = evaluator.evaluate(state.params, state.frozen)
                record.update(scores)
                if eval_log is not None:
                    eval_log.write(step + 1, per_prompt)
        record["step_time_s"] = time.perf_counter() - start
        if tc.keep_best_metric is not None and tc.keep_best_metric not in {**before, **record}:
            raise ConfigError(
                f"config.train.keep_best_metric: {tc.keep_best_metric!r} is not a metric of this run; choose one "
                f"of {', '.join(sorted({**before, **record}))}"
            )
        history.append(record)
        if steps_log is not None:
            steps_log.write(step, record)
        if step % tc.log_every == 0 or last:
            writer.write(step, record)
        postfix = {"reward": f"{record['reward_mean']:.4f}"}
        if "truth/strict" in record:
            postfix["truth"] = f"{record['truth/strict']:.2f}"
        bar.set_postfix(postfix)
        final = last or stop.raised
        if save_due(step, tc.checkpoint_every, final) or stop.raised:
            checkpointer.save(state, {"step": step + 1, **saved_config}, record)
        if save_due(step, tc.export_every, final):
            export_policy(
                out_dir / "policy" / f"step_{step + 1}",
                config,
                state.params,
                state.frozen,
                {"step": step + 1, "method": config.advantage.method, "reward": config.reward.name},
                getattr(bundle.tokenize, "words", ()),
            )
        if tracing and (stop.raised or step + 1 == tc.profile_steps[1]):
            jax.profiler.stop_trace()
            tracing = False
        if stop.raised:
            break
    # A run a signal stopped writes no report: it is not over, and its preemption grace period is short.
    stopped = stop.raised and int(state.step) < tc.num_steps
    if evaluator is not None and not stopped and primary:
        # The last step was evaluated: its images are the final state's.
        sets = {eval_set.name for eval_set in evaluator.sets}
        after = {k: v for k, v in history[-1].items() if k.split("/")[0] in sets}
        evaluator.grid(
            eval_images,
            out_dir / "samples_after.png",
            f"after {int(state.step)} GRPO steps ({config.advantage.method})",
        )
        save_curves(
            history,
            before,
            out_dir / "curves.png",
            f"{config.advantage.method}: reward {config.reward.name}",
            held_out=tuple(config.eval.rewards),
        )
        write_summary(out_dir / SUMMARY_FILE, config, history, before, after, time.perf_counter() - started)
    writer.close()
    if stopped:
        done = int(state.step)
        return Outcome(
            history,
            stopped=f"stopped by {stop.raised} after step {done} of {tc.num_steps}; checkpoint {done} saved in "
            f"{checkpointer.directory}; rerun the same command to resume",
        )
    return Outcome(history)


def build_step(
    config: Config,
    pipeline: grpo.Pipeline,
    reward: Reward,
    tx: optax.GradientTransformation,
    state: grpo.TrainState,
    shardings: grpo.TrainState,
    batch: dict[str, Any],
    mesh: Mesh,
) -> Callable[..., tuple[grpo.TrainState, dict[str, Any]]]:
    """The compiled step ``(state, batch, key, texts) -> (state, metrics)``: one jit for a JAX reward, the
    split step (:class:`HostScoredStep`) for a host reward. ``batch``: the global prompt batch's shapes
    (arrays or ShapeDtypeStructs); the step takes this process's rows of it as host arrays."""
    return_samples = bool(config.eval.scorer)
    if reward.host is None:
        if config.reward.host_chunks != 1:
            raise ConfigError(
                f"config.reward.host_chunks: applies to host rewards only; {config.reward.name!r} runs in the "
                "step, so leave it at 1"
            )

        def reward_fn(frozen_tree: Any, images: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
            return reward.fn(frozen_tree["reward"], images, batch)

        step_fn = grpo.make_train_step(pipeline, reward_fn, tx, config, mesh, return_samples=return_samples)
        jitted = grpo.jit_train_step(step_fn, state, shardings, batch, mesh)
        return lambda state, batch, key, _texts: jitted(state, batch, key)
    chunks = config.reward.host_chunks
    check_host_layout(config.train.prompts_per_step * config.train.group_size // chunks, mesh)
    chunk_batch = {
        name: jax.ShapeDtypeStruct((value.shape[0] // chunks, *value.shape[1:]), value.dtype)
        for name, value in batch.items()
    }
    stages = grpo.make_step_stages(pipeline, tx, config, mesh, return_samples=return_samples)
    compiled = grpo.jit_host_reward_step(stages, config, shardings, chunk_batch, mesh)
    return HostScoredStep(compiled, reward, config.train.group_size, chunks, mesh)


def nonfinite_line(config: Config, record: dict[str, float], step: int, failures: Sequence[str]) -> str:
    """The one line ending a run whose reward was not finite at ``step``: the first failure a host reward
    reported on this process, or the count (a JAX reward, or a failure on another process)."""
    count = int(record["reward_nonfinite"])
    fix = "set reward.on_failure='drop_group' to drop the groups instead"
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return f"step {step}: {failures[0]}{more}; {fix}"
    return (
        f"step {step}: reward {config.reward.name!r} gave {count} non-finite rewards of "
        f"{config.train.prompts_per_step * config.train.group_size}; fix the reward or {fix}"
    )


def train_command(parsed: Parsed) -> str | Exit:
    """The train command's body: validated config -> (multi-host join) -> run -> summary line."""
    config = load_config(parsed.config)
    if parsed.flags["multihost"].value:
        parallel.initialize_distributed(
            parsed.flags["coordinator_address"].value,
            parsed.flags["num_processes"].value,
            parsed.flags["process_id"].value,
        )
    outcome = train(config)
    if outcome.finished:
        return outcome.finished
    if outcome.stopped:
        return Exit(outcome.stopped, EXIT_STOPPED)
    history = outcome.history
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    return f"done: {len(history)} steps, mean reward {first:.4f} -> {last:.4f}; metrics in {config.train.output_dir}"


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(train_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
