"""Command line: ``python -m slas_jax.train --config configs/X.py [--config.section.key=value ...]``.

Wiring only: config -> mesh -> pipeline, reward, prompts -> jitted GRPO step -> loop with progress bar and
JSON-lines metrics. Bad configs, missing checkpoints and bad inputs end with one line on stderr and exit
code 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import runpy
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags
from ml_collections import ConfigDict, config_flags
from tqdm import tqdm

from slas_jax import grpo, parallel
from slas_jax.checkpoint import Checkpointer
from slas_jax.config import Config, ConfigError, load_config
from slas_jax.data import build_prompt_source
from slas_jax.evaluate import Evaluator, save_curves, write_summary
from slas_jax.metrics import MetricsWriter, to_python
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import build_pipeline
from slas_jax.pipelines.pretrained import export_policy
from slas_jax.rewards import build_reward

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", flag_values=FLAGS
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks for errors.", flag_values=FLAGS)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Join a multi-host run (Cloud TPU pods: addresses are auto-detected).",
    flag_values=FLAGS,
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, when not auto-detected.", flag_values=FLAGS
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the run.", flag_values=FLAGS)
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.", flag_values=FLAGS)

USER_ERRORS = (ConfigError, ConversionError, FileNotFoundError)


def flag_error_line(error: flags.Error) -> str:
    """One line for a flag error. An exception raised inside a config file's ``get_config`` reaches us as a
    flag error holding its traceback; the line keeps the flag and the exception's own last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].split(': ')[0]}: {lines[-1]}"
    return lines[0]


def _explain_override_error(argv: list[str]) -> str:
    """Names the first ``--config.a.b=v`` override whose key path the config file does not have."""
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_path is None and "--config" in argv:
        config_path = argv[argv.index("--config") + 1]
    if config_path is None:
        return "missing --config; pass --config configs/<name>.py"
    if not Path(config_path).is_file():
        return f"config file {config_path} does not exist; pass --config configs/<name>.py"
    values = runpy.run_path(config_path)["get_config"]()
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0]
        node = values
        for i, key in enumerate(path.split(".")):
            if key not in node:
                where = ".".join(path.split(".")[:i]) or "the top level"
                return (
                    f"unknown config key {path!r} in {arg}; keys at {where}: {', '.join(sorted(node.keys()))}"
                )
            node = node[key]
    return "could not parse the command line; check the --config overrides"


def read_config_flag(
    argv: list[str], flag_values: flags.FlagValues, config_flag: flags.FlagHolder, hint: str
) -> ConfigDict:
    """Parses ``argv`` into ``flag_values`` and returns the ``--config`` ConfigDict (overrides applied), or
    raises ConfigError with one line, explaining bad overrides as the train CLI does; ``hint`` names the
    config files to pass."""
    try:
        flag_values(argv)
        raw = config_flag.value
        if raw is None:
            raise ConfigError(f"missing --config; pass --config {hint}")
        raw.to_dict()
    except flags.Error as e:
        raise ConfigError(flag_error_line(e)) from e
    except (AttributeError, KeyError, TypeError, OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(_explain_override_error(argv)) from e
    return raw


def parse_config(argv: list[str]) -> Config:
    """Flags -> validated Config, or ConfigError with one line."""
    return load_config(read_config_flag(argv, FLAGS, _CONFIG, "configs/<name>.py"))


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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    verbose = "--verbose" in argv or "--verbose=true" in argv
    try:
        config = parse_config(argv)
        if _MULTIHOST.value:
            parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        history = run(config)
    except (*USER_ERRORS, FloatingPointError) as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
    print(
        f"done: {len(history)} steps, mean reward {first:.4f} -> {last:.4f}; metrics in {config.train.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
