"""Command line: ``python -m slas_jax.testbed.pretrain --config configs/shapes_pretrain_flow.py
[--config.a.b=v ...]``.

Pretrains a shapes-testbed base model, jointly with its text encoder, on rendered (image, caption) pairs of
the shapes TRAINING prompts (``slas_jax.testbed.shapes``; images 32x32 RGB scaled to [-1, 1]):

* ``model.family == "flux"``: flow matching. x_s = (1 - s) x0 + s noise, target velocity noise - x0, the
  model conditioned on s itself; s = shift(sigmoid(n)), n ~ N(logit_mean, logit_std^2) (SD3's logit-normal,
  optionally shifted towards noise like the sampler's schedule).
* ``model.family == "unet"``: epsilon prediction under the DDPM forward process of the sampler's
  ``alphas_cumprod``, t uniform over 0 .. num_train_timesteps - 1.

A fraction ``cond_dropout`` of captions is replaced by the negative prompt's tokens (the pipeline's
``uncond_tokens``) so that classifier-free guidance works. Training runs through the bundle's own
``pipeline.encode`` / ``pipeline.denoise``, so the weights drop straight into the RL pipelines
(``model.init_checkpoint``). Training stops after ``pretrain.steps`` on purpose: the base model must stay
imperfect. Afterwards GenEval-style accuracy (the ground-truth scorer of ``slas_jax.testbed.ground_truth``,
strict and partial, overall and per category) is measured on images sampled with the RL sampler settings
(``grpo.make_generate``) for every training and held-out prompt, and the checkpoint is written to
``pretrain.output_dir`` (``slas_jax.weights``) with a JSON of config, eval numbers and the hash of the
parameters. JAX on CPU is deterministic: the same command on the same machine and software reproduces the
parameters bit for bit (same hash).

Bad configs end with one line on stderr and exit code 2 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from slas_jax.cli import EXIT_STOPPED, Command, Exit, Parsed, StopSignals
from slas_jax.config import (
    Config,
    describe_config,
    describe_fields,
    from_mapping,
    json_ready,
    load_config,
    require,
)
from slas_jax.errors import ConfigError
from slas_jax.evaluate import generate_images
from slas_jax.param_paths import select
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.samplers.flow import time_shift
from slas_jax.testbed.ground_truth import score_batch
from slas_jax.testbed.optim import warmup_cosine_adamw
from slas_jax.testbed.shapes import TAGS, VOCABULARY, PromptSpec, render, split_specs
from slas_jax.weights import count_params, params_hash, save_checkpoint, software


def _require(ok: bool, name: str, message: str) -> None:
    require(ok, f"pretrain.{name}", message)


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """The ``pretrain`` section."""

    steps: int = 1000
    """Optimizer steps; training stops there on purpose (the base model must stay imperfect)."""
    batch_size: int = 32
    """(image, caption) pairs per step."""
    learning_rate: float = 1e-3
    """AdamW peak, reached linearly over ``warmup_steps``, then cosine-decayed."""
    warmup_steps: int = 100
    """Linear warmup steps, in [0, steps)."""
    final_lr_fraction: float = 0.1
    """The cosine decay ends at this fraction of the peak, at ``steps``."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Global-norm gradient clipping threshold."""
    seed: int = 0
    """Data order, noise, times and condition dropout (``model.seed`` initialises the weights)."""
    cond_dropout: float = 0.1
    """Fraction of captions replaced by the negative prompt, so that classifier-free guidance works."""
    logit_mean: float = 0.0
    """Mean of the flow-matching logit-normal time distribution (ignored by the UNet)."""
    logit_std: float = 1.0
    """Std of the flow-matching logit-normal time distribution (ignored by the UNet)."""
    time_shift: float = 1.0
    """Shift of the flow-matching times towards noise, like the sampler's schedule (ignored by the UNet)."""
    min_snr_gamma: float = 0.0
    """The UNet's Min-SNR-gamma loss weight min(SNR, gamma) / SNR (Hang et al. 2023), which stops easy
    low-noise timesteps from dominating the gradient; 0: unweighted (ignored by the flow model)."""
    output_dir: str = "checkpoints/shapes_flow"
    """The checkpoint folder (replaced)."""
    eval_samples_per_prompt: int = 2
    """Images per prompt of each evaluation set; 0: no evaluation."""
    eval_prompts: int = 0
    """The first this many prompts of each evaluation set; 0: all of them."""
    eval_seed: int = 1
    """Keys of the evaluation samples."""
    eval_chunk: int = 128
    """Prompts per sampler call during evaluation."""
    zero_init: tuple[str, ...] = ()
    """Regular expressions over the backbone's dotted parameter paths whose parameters start at zero, e.g.
    DiT's adaLN-Zero (modulation and output layers): every block starts as the identity and the output at
    zero, which trains markedly faster."""
    ema_decay: float = 0.0
    """The saved and evaluated weights are an exponential moving average with decay min(ema_decay, (1 + step)
    / (10 + step)); 0: the trained weights themselves. Short runs at a high learning rate sample much better
    from the average."""
    log_every: int = 50
    """Steps between loss readings (the only points where the host waits for the device)."""
    checkpoint_every: int = 500
    """Steps between saves of the training state to ``<output_dir>.state`` (0: none). The same command finding
    that folder continues from its newest step, bit for bit as if never stopped; it is removed once the
    checkpoint is written."""

    def validate(self) -> None:
        _require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.learning_rate > 0, "learning_rate", "must be > 0")
        _require(0 <= self.warmup_steps < self.steps, "warmup_steps", "must be in [0, steps)")
        _require(0 <= self.final_lr_fraction <= 1, "final_lr_fraction", "must be in [0, 1]")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(self.grad_clip > 0, "grad_clip", "must be > 0")
        _require(0 <= self.cond_dropout < 1, "cond_dropout", "must be in [0, 1)")
        _require(self.logit_std > 0, "logit_std", "must be > 0")
        _require(self.time_shift > 0, "time_shift", "must be > 0")
        _require(self.min_snr_gamma >= 0, "min_snr_gamma", "must be >= 0 (0: unweighted)")
        _require(self.eval_samples_per_prompt >= 0, "eval_samples_per_prompt", "must be >= 0 (0: no eval)")
        _require(self.eval_prompts >= 0, "eval_prompts", "must be >= 0 (0: every prompt)")
        _require(self.eval_chunk >= 1, "eval_chunk", "must be >= 1")
        _require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        _require(self.log_every >= 1, "log_every", "must be >= 1")
        _require(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: no resumable state)")


def load_pretrain_config(values: Any) -> tuple[Config, PretrainConfig]:
    """ConfigDict / mapping with ``model``, ``sampler`` (run-config sections, so ``build_pipeline`` and the
    RL sampler settings apply) and ``pretrain`` -> validated (Config, PretrainConfig)."""
    if hasattr(values, "to_dict"):
        values = values.to_dict()
    values = dict(values)
    pretrain = from_mapping(PretrainConfig, values.pop("pretrain", {}), "pretrain")
    pretrain.validate()
    return load_config(values), pretrain


def describe_pretrain_config() -> str:
    """The ``--help`` listing: the pretrain section's fields, then the run config's (model, sampler)."""
    return "\n".join(describe_fields(PretrainConfig, "config.pretrain")) + "\n" + describe_config()


COMMAND = Command(
    "testbed.pretrain",
    __doc__,
    config_hint="configs/shapes_pretrain_<flow|unet>.py",
    config_help=describe_pretrain_config,
)


def parse_config(argv: list[str]) -> tuple[Config, PretrainConfig]:
    """Flags -> validated configs, or ConfigError with one line."""
    return load_pretrain_config(COMMAND.parse(argv).config)


# ---------------------------------------------------------------------------------------------------------
# Data


def render_batch(
    specs: Sequence[PromptSpec], seed: int, step: int, batch_size: int
) -> tuple[np.ndarray, list[str]]:
    """Training pairs of step ``step``: ``batch_size`` prompts drawn uniformly from ``specs`` and one fresh
    render each, all from numpy's generator seeded by (seed, step) (so any step can be regenerated alone).

    Returns images (batch_size, h, w, 3) float32 in [-1, 1] and their captions.
    """
    rng = np.random.default_rng([seed, step])
    chosen = [specs[i] for i in rng.integers(len(specs), size=batch_size)]
    images = np.stack([render(s, rng) for s in chosen])
    return images * 2.0 - 1.0, [s.prompt for s in chosen]


# ---------------------------------------------------------------------------------------------------------
# Objectives


def make_loss(bundle: PipelineBundle, config: Config, pc: PretrainConfig) -> Callable[..., jax.Array]:
    """The denoising loss ``(trainable, images, tokens, key) -> scalar float32``.

    trainable: {"backbone": bundle.params-like, "text": text encoder state}; images: (b, h, w, 3) float32 in
    [-1, 1]; tokens: (b, length) int32 captions; key: PRNG key for dropout, times and noise.
    """
    pipeline = bundle.pipeline
    uncond_tokens = bundle.frozen["uncond_tokens"]  # (1, length): the negative prompt
    family = config.model.family
    if family == "unet":
        alphas_cumprod = jnp.asarray(pipeline.sampler.alphas_cumprod, jnp.float32)
        prediction_type = pipeline.sampler.prediction_type

    def loss_fn(trainable: Mapping[str, Any], x0: jax.Array, tokens: jax.Array, key: jax.Array) -> jax.Array:
        drop_key, time_key, noise_key = jax.random.split(key, 3)
        batch = x0.shape[0]
        drop = jax.random.bernoulli(drop_key, pc.cond_dropout, (batch,))
        tokens = jnp.where(drop[:, None], uncond_tokens, tokens)
        cond, _ = pipeline.encode({**bundle.frozen, "text": trainable["text"]}, {"tokens": tokens})
        noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
        if family == "flux":
            u = jax.nn.sigmoid(pc.logit_mean + pc.logit_std * jax.random.normal(time_key, (batch,)))
            s = time_shift(u, pc.time_shift)[:, None, None, None]
            x = (1.0 - s) * x0 + s * noise
            pred = pipeline.denoise(trainable["backbone"], x, s[:, 0, 0, 0], cond)
            target = noise - x0
            weight = 1.0
        else:
            t = jax.random.randint(time_key, (batch,), 0, alphas_cumprod.shape[0])
            a = alphas_cumprod[t][:, None, None, None]
            x = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise
            pred = pipeline.denoise(trainable["backbone"], x, t.astype(jnp.float32), cond)
            target = noise if prediction_type == "epsilon" else jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0
            snr = a / (1.0 - a)
            # Min-SNR-gamma weighs the x0 error by min(SNR, gamma); an eps loss is SNR x, a v loss (SNR + 1) x it.
            weight = (
                jnp.minimum(snr, pc.min_snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1.0)
                if pc.min_snr_gamma
                else 1.0
            )
        return jnp.mean(weight * jnp.square(pred.astype(jnp.float32) - target))

    return loss_fn


def zero_init(params: Any, patterns: Sequence[str]) -> Any:
    """``params`` with every leaf whose dotted path matches one of ``patterns`` (``re.search``) set to zeros;
    ConfigError when a pattern matches nothing (:func:`slas_jax.param_paths.select`)."""
    mask = select(params, patterns, "pretrain.zero_init")
    return jax.tree.map(lambda leaf, hit: jnp.zeros_like(leaf) if hit else leaf, params, mask)


def make_optimizer(pc: PretrainConfig) -> optax.GradientTransformation:
    """The pretraining optimizer of ``pc``."""
    return warmup_cosine_adamw(
        pc.learning_rate,
        pc.warmup_steps,
        pc.steps,
        final_lr_fraction=pc.final_lr_fraction,
        grad_clip=pc.grad_clip,
        weight_decay=pc.weight_decay,
    )


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def accuracy(images: np.ndarray, specs: Sequence[PromptSpec], samples_per_prompt: int) -> dict[str, Any]:
    """Ground-truth scores of ``images`` (sample j of spec i at i * samples_per_prompt + j): mean strict and
    partial overall and per GenEval category ({"strict", "partial", "per_tag": {tag: {...}}, "images"})."""
    per_sample = [s for s in specs for _ in range(samples_per_prompt)]
    strict, partial = score_batch(images, per_sample)
    tags = np.asarray([s.tag for s in per_sample])
    per_tag = {
        tag: {
            "strict": round(float(strict[tags == tag].mean()), 4),
            "partial": round(float(partial[tags == tag].mean()), 4),
            "images": int((tags == tag).sum()),
        }
        for tag in TAGS
        if (tags == tag).any()
    }
    return {
        "strict": round(float(strict.mean()), 4),
        "partial": round(float(partial.mean()), 4),
        "images": len(per_sample),
        "per_tag": per_tag,
    }


def evaluate(
    bundle: PipelineBundle, config: Config, pc: PretrainConfig, trainable: Mapping[str, Any]
) -> dict[str, Any]:
    """Accuracy on the training and the held-out prompts (the first ``pc.eval_prompts`` of each, or all),
    ``pc.eval_samples_per_prompt`` images each."""
    frozen = {**bundle.frozen, "text": trainable["text"]}
    results = {}
    for split in ("train", "held_out"):
        specs = split_specs(split)[: pc.eval_prompts or None]
        images = generate_images(
            bundle,
            config,
            trainable["backbone"],
            frozen,
            [s.prompt for s in specs],
            samples_per_prompt=pc.eval_samples_per_prompt,
            seed=pc.eval_seed,
            chunk=pc.eval_chunk,
        )
        results[split] = accuracy(images, specs, pc.eval_samples_per_prompt)
    return results


# ---------------------------------------------------------------------------------------------------------
# The run


class Stopped(Exception):
    """A signal stopped the pretraining after saving its state; the message says where and how to go on."""


STATE_SUFFIX = ".state"
"""``<output_dir><STATE_SUFFIX>``: the folder of a pretraining run's resumable state."""


class TrainingState:
    """The resumable state of a pretraining run in ``<output_dir>.state`` (Orbax, the newest two steps): its
    (weights, average, optimizer state) leaves, the loss readings so far and the configs it belongs to."""

    def __init__(self, config: Config, pc: PretrainConfig):
        self.folder = Path(pc.output_dir + STATE_SUFFIX).absolute()
        pretraining = {k: v for k, v in json_ready(pc).items() if k != "output_dir"}
        # As the saved JSON reads back (tuples as lists).
        self.fingerprint = json.loads(
            json.dumps({"model": json_ready(config.model), "pretrain": pretraining})
        )
        self.manager: ocp.CheckpointManager | None = None

    def _manager(self) -> ocp.CheckpointManager:
        if self.manager is None:
            self.manager = ocp.CheckpointManager(
                self.folder, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
            )
        return self.manager

    def restore(self, fresh: Any) -> tuple[int, Any, list[tuple[int, float]]]:
        """(first step to run, state, loss readings): those saved, else (0, ``fresh``, []). ConfigError in one
        line when the folder holds another configuration's run."""
        if not self.folder.is_dir():
            return 0, fresh, []
        manager = self._manager()
        step = manager.latest_step()
        if step is None:
            return 0, fresh, []
        # The configs first: another model's arrays would not even restore into this one's shapes.
        extra = manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore())).extra
        if extra["fingerprint"] != self.fingerprint:
            raise ConfigError(
                f"{self.folder} holds the state of a pretraining run with another configuration; remove it to "
                "start afresh, or run the configuration it came from"
            )
        leaves, treedef = jax.tree.flatten(fresh)
        abstract = {str(n): jax.ShapeDtypeStruct(x.shape, x.dtype) for n, x in enumerate(leaves)}
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        print(f"resumed from step {step} in {self.folder}", file=sys.stderr)
        state = jax.tree.unflatten(treedef, [restored.state[str(n)] for n in range(len(leaves))])
        return step, state, [(int(s), float(v)) for s, v in extra["losses"]]

    def save(self, step: int, state: Any, losses: Sequence[tuple[int, float]]) -> None:
        """Saves the state after ``step`` steps (in the background: the next steps run meanwhile)."""
        leaves = {str(n): x for n, x in enumerate(jax.tree.leaves(state))}
        extra = {"fingerprint": self.fingerprint, "losses": [list(r) for r in losses]}
        self._manager().save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), extra=ocp.args.JsonSave(extra))
        )

    def close(self) -> None:
        """Waits for the last save."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
            self.manager = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def train(
    config: Config, pc: PretrainConfig, *, progress: bool = True
) -> tuple[PipelineBundle, dict[str, Any], list[tuple[int, float]]]:
    """Pretrains from scratch, or continues the run saved in ``<output_dir>.state``; returns the bundle with
    the trained weights (their moving average when
    ``ema_decay`` is set), those weights as {"backbone", "text"} and the loss readings [(step, loss)] every
    ``log_every`` steps and at the end."""
    bundle = build_pipeline(
        dataclasses.replace(config, model=dataclasses.replace(config.model, init_checkpoint=None)), VOCABULARY
    )
    trainable = {"backbone": zero_init(bundle.params, pc.zero_init), "text": bundle.frozen["text"]}
    tx = make_optimizer(pc)
    loss_fn = make_loss(bundle, config, pc)

    def step_fn(trainable, average, opt_state, images, tokens, key, step):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, images, tokens, key)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        if pc.ema_decay:
            decay = jnp.minimum(pc.ema_decay, (1.0 + step) / (10.0 + step))
            average = jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, average, trainable)
        return trainable, average, opt_state, loss

    step = jax.jit(step_fn, donate_argnums=(0, 1, 2))
    opt_state = tx.init(trainable)
    # The average needs its own buffers: the step donates both trees.
    average = jax.tree.map(jnp.copy, trainable) if pc.ema_decay else None
    saved = TrainingState(config, pc)
    start, (trainable, average, opt_state), losses = saved.restore((trainable, average, opt_state))
    specs = split_specs("train")
    base_key = jax.random.PRNGKey(pc.seed)
    bar = tqdm(
        range(start, pc.steps),
        desc="pretrain",
        unit="step",
        dynamic_ncols=True,
        disable=not progress,
        initial=start,
        total=pc.steps,
    )
    # SIGTERM / Ctrl-C end the step in flight and save it; an error still lets the save in flight finish.
    done = start
    with StopSignals() as stop:
        try:
            for i in bar:
                # The step is dispatched asynchronously: the next batch renders on the host while the device trains.
                images, prompts = render_batch(specs, pc.seed, i, pc.batch_size)
                trainable, average, opt_state, loss = step(
                    trainable,
                    average,
                    opt_state,
                    images,
                    bundle.tokenize(prompts),
                    jax.random.fold_in(base_key, i),
                    jnp.asarray(i, jnp.float32),
                )
                if i % pc.log_every == 0 or i == pc.steps - 1:
                    losses.append((i, float(loss)))
                    if not np.isfinite(losses[-1][1]):
                        raise FloatingPointError(
                            f"loss became {losses[-1][1]} at step {i}; lower pretrain.learning_rate"
                        )
                    bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
                done = i + 1
                due = pc.checkpoint_every and done % pc.checkpoint_every == 0
                if done < pc.steps and (due or stop.raised):
                    saved.save(done, (trainable, average, opt_state), losses)
                if stop.raised and done < pc.steps:
                    break
        finally:
            saved.close()
    if stop.raised and done < pc.steps:
        raise Stopped(
            f"stopped by {stop.raised} after step {done} of {pc.steps}; saved in {saved.folder}: run the same "
            "command to continue"
        )
    trainable = jax.block_until_ready(average if pc.ema_decay else trainable)
    bundle = dataclasses.replace(
        bundle, params=trainable["backbone"], frozen={**bundle.frozen, "text": trainable["text"]}
    )
    return bundle, trainable, losses


def run(config: Config, pc: PretrainConfig, *, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Trains, evaluates and writes the checkpoint to ``pc.output_dir``; returns the metadata it wrote."""
    started = time.perf_counter()
    bundle, trainable, losses = train(config, pc, progress=progress)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate(bundle, config, pc, trainable) if pc.eval_samples_per_prompt else {}
    metadata = {
        "kind": "shapes_base_model",
        "family": config.model.family,
        "command": command,
        "model": json_ready(config.model),
        "sampler": json_ready(config.sampler),
        "pretrain": json_ready(pc),
        "vocabulary": list(VOCABULARY),
        "num_params": {k: count_params(v) for k, v in trainable.items()},
        "params_sha256": params_hash(trainable),
        "eval": evaluation,
        "loss": [[s, round(v, 5)] for s, v in losses],
        "seconds": {"train": round(train_seconds, 1), "eval": round(time.perf_counter() - started, 1)},
        "software": software(),
    }
    save_checkpoint(pc.output_dir, trainable, metadata)
    TrainingState(config, pc).remove()
    return metadata


def pretrain_command(parsed: Parsed) -> str | Exit:
    """The command's body: validated configs -> pretraining, evaluation, checkpoint -> summary line."""
    config, pc = load_pretrain_config(parsed.config)
    try:
        metadata = run(config, pc, command=" ".join([COMMAND.prog, *sys.argv[1:]]))
    except Stopped as e:
        return Exit(str(e), EXIT_STOPPED)
    summary = ", ".join(
        f"{split} strict {m['strict']:.3f} partial {m['partial']:.3f}"
        for split, m in metadata["eval"].items()
    )
    return (
        f"done: {pc.steps} steps in {metadata['seconds']['train']:.0f} s; {summary or 'no eval'}; "
        f"params sha256 {metadata['params_sha256'][:16]}; saved to {pc.output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(pretrain_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
