"""Command line: ``python -m slas_jax.testbed.train_proxy --config configs/shapes_proxy.py
[--config.key=value ...]``.

Trains the shapes testbed's learned proxy reward (``slas_jax.testbed.proxy``) on a LIMITED labelled sample and
writes it to ``output_dir`` (default ``checkpoints/shapes_proxy``). The sample, all on the TRAINING prompts:

* renders: ``renders`` fresh renders of random prompts, a ``degraded_fraction`` of them blurred and noised
  (``max_blur``, ``max_noise``) so that they look more like samples;
* base-model samples: for each checkpoint in ``base_checkpoints``, ``base_samples`` images sampled with its
  recorded RL sampler settings, ``base_group_size`` per prompt: groups like the ones GRPO ranks.

Each image is paired three times: with its own prompt, with a near miss (the closest prompt of its GenEval
category in words: another count, colour or relation, or the objects swapped) and with a random prompt of its
category. Near misses are the hard negatives that make the proxy read counts, colours and relations.

Labels are the ground-truth PARTIAL score (``slas_jax.testbed.ground_truth``) of each (image, prompt) pair.
The loss is the squared error of the score plus, weighted by ``rank_weight``, the squared error of the
group-centred score of base samples with their own prompt: a group-relative advantage only sees how the proxy
orders the samples of one prompt, and that ordering is what the proxy is worst at when it only learns absolute
scores (docs/testbed.md). A random ``validation_fraction`` of the images (whole groups, with all their pairs)
is held back; the metadata reports Pearson and Spearman correlations with the truth on it (overall, per source
and within groups), and on an out-of-domain set built the same way on the HELD-OUT prompts. Everything is
seeded by ``seed``: the same command on the same machine and software reproduces the parameters bit for bit
(``params_sha256`` in the metadata).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage, stats
from tqdm import tqdm

from slas_jax.cli import Command, Parsed
from slas_jax.config import describe_fields, from_mapping, json_ready, require
from slas_jax.evaluate import generate_images
from slas_jax.testbed.ground_truth import score_batch
from slas_jax.testbed.optim import warmup_cosine_adamw
from slas_jax.testbed.proxy import build_proxy, proxy_scores
from slas_jax.testbed.shapes import IMAGE_SIZE, MAX_TOKENS, VOCABULARY, PromptSpec, render, split_specs
from slas_jax.weights import count_params, load_policy, params_hash, save_checkpoint, software

SCORE_CHUNK = 256


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """The proxy's architecture, labelled sample and training (module docstring)."""

    architecture: Mapping[str, Any] = field(default_factory=dict)
    """{"text": CLIPTextConfig fields, "vision": CLIPVisionConfig fields, "projection_dim", optionally
    "phases" and "stem"} (``slas_jax.testbed.proxy.ProxyModel``)."""
    model_seed: int = 0
    """Initialisation of the proxy."""
    renders: int = 1024
    """Fresh renders of random training prompts in the sample."""
    degraded_fraction: float = 0.5
    """Fraction of the renders blurred and noised so that they look more like samples."""
    max_blur: float = 1.0
    """Largest Gaussian blur sigma of a degraded render."""
    max_noise: float = 0.08
    """Largest pixel-noise std of a degraded render."""
    base_checkpoints: tuple[str, ...] = ("checkpoints/shapes_flow",)
    """Base-model weight folders whose samples join the sample."""
    base_samples: tuple[int, ...] = (1024,)
    """Samples of each base checkpoint, one count per checkpoint."""
    base_group_size: int = 1
    """Base samples per prompt: groups like the ones GRPO ranks; divides every sample count."""
    validation_fraction: float = 0.2
    """Images (whole groups, with all their pairs) held back for the correlation report."""
    ood_renders: int = 256
    """Renders of the out-of-domain report set on held-out prompts."""
    ood_base_samples: int = 256
    """Samples of the first base checkpoint in the out-of-domain report set."""
    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 64
    """(image, prompt) pairs per step."""
    learning_rate: float = 1e-3
    """AdamW peak after ``warmup_steps``, cosine-decayed to 10%."""
    warmup_steps: int = 100
    """Linear warmup steps, in [0, steps)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    rank_weight: float = 0.0
    """Weight of the within-group loss: the squared error of group-centred scores, the within-prompt order a
    GRPO advantage reads; 0: off."""
    group_batch: int = 8
    """Groups per step in the within-group loss."""
    seed: int = 0
    """Sample, split and batch order."""
    output_dir: str = "checkpoints/shapes_proxy"
    """The checkpoint folder (replaced)."""
    log_every: int = 100
    """Steps between loss readings."""

    def validate(self) -> None:
        require(
            {"text", "vision", "projection_dim"} <= set(self.architecture),
            "architecture",
            "needs text, vision and projection_dim",
        )
        require(
            len(self.base_checkpoints) == len(self.base_samples),
            "base_samples",
            f"needs one count per base checkpoint ({len(self.base_checkpoints)})",
        )
        require(self.renders >= 1, "renders", "must be >= 1")
        require(
            self.base_group_size >= 1
            and all(n % self.base_group_size == 0 for n in (*self.base_samples, self.ood_base_samples)),
            "base_group_size",
            "must be >= 1 and divide base_samples and ood_base_samples",
        )
        require(
            self.rank_weight >= 0 and self.group_batch >= 1,
            "rank_weight",
            "needs rank_weight >= 0, group_batch >= 1",
        )
        require(0 <= self.degraded_fraction <= 1, "degraded_fraction", "must be in [0, 1]")
        require(self.max_blur >= 0 and self.max_noise >= 0, "max_blur", "blur and noise must be >= 0")
        require(0 < self.validation_fraction < 1, "validation_fraction", "must be in (0, 1)")
        require(self.steps > self.warmup_steps >= 0, "warmup_steps", "must be in [0, steps)")
        require(self.batch_size >= 1 and self.learning_rate > 0, "batch_size", "batch and lr must be > 0")
        require(self.log_every >= 1, "log_every", "must be >= 1")


def load_proxy_config(values: Any) -> ProxyConfig:
    """ConfigDict / mapping -> validated ProxyConfig (unknown keys and bad values raise ConfigError)."""
    config = from_mapping(ProxyConfig, values)
    config = dataclasses.replace(
        config, base_checkpoints=tuple(config.base_checkpoints), base_samples=tuple(config.base_samples)
    )
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------------------
# The labelled sample


@dataclass(frozen=True)
class LabelledPairs:
    """(image, prompt) pairs with their ground truth.

    images: (n_images, h, w, 3) float32 in [0, 1]; image_index: (n,) int, the image of each pair; prompts: n
    strings; source: (n,) str, where the image came from and whether the prompt is its own ("render",
    "render/other", "<base>", "<base>/other"); partial, strict: (n,) float32 ground-truth scores; group: (n,)
    int, for a base sample paired with its own prompt the id of its group (the samples of one prompt, as in
    a GRPO group), -1 for every other pair; image_unit: (n_images,) int, the group of each image (renders
    alone in theirs), the unit that train / validation splits keep whole.
    """

    images: np.ndarray
    image_index: np.ndarray
    prompts: list[str]
    source: np.ndarray
    partial: np.ndarray
    strict: np.ndarray
    group: np.ndarray
    image_unit: np.ndarray

    def subset(self, keep: np.ndarray) -> LabelledPairs:
        """The pairs where ``keep`` (n,) bool holds (images stay shared)."""
        return LabelledPairs(
            self.images,
            self.image_index[keep],
            [p for p, k in zip(self.prompts, keep, strict=True) if k],
            self.source[keep],
            self.partial[keep],
            self.strict[keep],
            self.group[keep],
            self.image_unit,
        )

    def groups(self) -> np.ndarray:
        """(num_groups, group_size) pair indices of the groups (all of one size), in group-id order."""
        ids = np.unique(self.group[self.group >= 0])
        return np.stack([np.flatnonzero(self.group == g) for g in ids]) if len(ids) else np.zeros((0, 0), int)


def other_prompt(spec: PromptSpec, specs: Sequence[PromptSpec], rng: np.random.Generator) -> PromptSpec:
    """A random prompt of ``spec``'s category other than ``spec`` itself (itself when it is alone)."""
    candidates = [s for s in specs if s.tag == spec.tag and s.prompt != spec.prompt] or [spec]
    return candidates[int(rng.integers(len(candidates)))]


def word_distance(a: str, b: str) -> int:
    """Words that differ position by position (a length difference counts as that many words)."""
    x, y = a.split(), b.split()
    return sum(u != v for u, v in zip(x, y, strict=False)) + abs(len(x) - len(y))


def near_miss(spec: PromptSpec, specs: Sequence[PromptSpec], rng: np.random.Generator) -> PromptSpec:
    """A random prompt of ``spec``'s category among those closest to it in words ("two red circles" for
    "three red circles", "left of" for "right of", swapped objects): the hard negatives that teach the proxy
    counts, colours and relations rather than the category's look (itself when it is alone)."""
    candidates = [s for s in specs if s.tag == spec.tag and s.prompt != spec.prompt]
    if not candidates:
        return spec
    distances = np.asarray([word_distance(spec.prompt, s.prompt) for s in candidates])
    closest = np.flatnonzero(distances == distances.min())
    return candidates[int(closest[rng.integers(len(closest))])]


def degrade(image: np.ndarray, rng: np.random.Generator, max_blur: float, max_noise: float) -> np.ndarray:
    """image: (h, w, 3) float32 in [0, 1], blurred (Gaussian, sigma uniform in [0, max_blur]) and with
    Gaussian pixel noise (std uniform in [0, max_noise]), clipped: renders that look more like samples."""
    sigma = rng.uniform(0.0, max_blur)
    blurred = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0.0)) if sigma > 0 else image
    noisy = blurred + rng.normal(0.0, rng.uniform(0.0, max_noise), image.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Degradation:
    """A ``fraction`` of the renders pass through :func:`degrade` with ``max_blur`` and ``max_noise``."""

    fraction: float = 0.0
    max_blur: float = 1.0
    max_noise: float = 0.08


PAIRINGS = ("", "/near", "/other")


def labelled_pairs(
    specs: Sequence[PromptSpec],
    renders: int,
    base: Sequence[tuple[str, int]],
    seed: int,
    degradation: Degradation = Degradation(),
    *,
    group_size: int = 1,
    progress: bool = False,
) -> LabelledPairs:
    """Each image (``renders`` renders, a ``degradation.fraction`` of them degraded, then ``count`` samples
    of each base checkpoint in ``base``: ``count // group_size`` prompts drawn uniformly from ``specs``,
    ``group_size`` samples each) paired with its own prompt (source "<origin>"), a near miss
    (``"<origin>/near"``) and another prompt of its category (``"<origin>/other"``), and scored by the
    ground truth."""
    rng = np.random.default_rng(seed)
    image_specs = [specs[i] for i in rng.integers(len(specs), size=renders)]
    rendered = [render(s, rng) for s in tqdm(image_specs, desc="render", unit="image", disable=not progress)]
    degraded = rng.random(renders) < degradation.fraction
    images = [
        np.stack(
            [
                degrade(x, rng, degradation.max_blur, degradation.max_noise) if d else x
                for x, d in zip(rendered, degraded, strict=True)
            ]
        )
    ]
    sources = ["render/degraded" if d else "render" for d in degraded]
    units = [np.arange(renders)]
    next_unit = renders
    for k, (folder, count) in enumerate(base):
        chosen = [specs[i] for i in rng.integers(len(specs), size=count // group_size)]
        config, bundle = load_policy(folder)
        if progress:
            tqdm.write(f"sampling {count} images from {folder}")
        images.append(
            generate_images(
                bundle,
                config,
                bundle.params,
                bundle.frozen,
                [s.prompt for s in chosen],
                samples_per_prompt=group_size,
                seed=seed * 1000 + k,
                chunk=max(1, 128 // group_size),
            )
        )
        image_specs += [s for s in chosen for _ in range(group_size)]
        sources += [folder.rstrip("/").split("/")[-1]] * (len(chosen) * group_size)
        units.append(np.repeat(np.arange(next_unit, next_unit + len(chosen)), group_size))
        next_unit += len(chosen)
    all_images = np.concatenate(images).astype(np.float32)
    n = len(image_specs)
    near = [near_miss(s, specs, rng) for s in image_specs]
    others = [other_prompt(s, specs, rng) for s in image_specs]
    pair_specs = [*image_specs, *near, *others]
    image_index = np.tile(np.arange(n), len(PAIRINGS))
    strict, partial = score_batch(all_images[image_index], pair_specs)
    image_unit = np.concatenate(units)
    grouped = np.arange(n) >= renders
    return LabelledPairs(
        images=all_images,
        image_index=image_index,
        prompts=[s.prompt for s in pair_specs],
        source=np.asarray([f"{s}{p}" for p in PAIRINGS for s in sources]),
        partial=partial,
        strict=strict,
        group=np.concatenate([np.where(grouped, image_unit, -1), np.full(n * (len(PAIRINGS) - 1), -1)]),
        image_unit=image_unit,
    )


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation


def predict(graph: Any, params: Any, pairs: LabelledPairs, tokenize: Any) -> np.ndarray:
    """Proxy scores (n,) float32 of every pair, SCORE_CHUNK pairs per jitted call (the last one padded)."""
    score = jax.jit(lambda p, x, t: proxy_scores(graph, p, x, t))
    tokens = tokenize(pairs.prompts)
    out = []
    for start in range(0, len(tokens), SCORE_CHUNK):
        index = np.arange(start, start + SCORE_CHUNK) % len(tokens)
        scores = score(params, pairs.images[pairs.image_index[index]], tokens[index])
        out.append(np.asarray(scores)[: min(SCORE_CHUNK, len(tokens) - start)])
    return np.concatenate(out)


def correlations(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pair count, mean prediction and mean truth, and (where both vary) Pearson and Spearman correlation
    and mean absolute error."""
    out = {
        "pairs": len(pred),
        "mean_prediction": round(float(np.mean(pred)), 4),
        "mean_truth": round(float(np.mean(truth)), 4),
        "mae": round(float(np.mean(np.abs(pred - truth))), 4),
    }
    if len(pred) >= 3 and np.std(truth) > 0 and np.std(pred) > 0:
        out["pearson"] = round(float(stats.pearsonr(pred, truth)[0]), 4)
        out["spearman"] = round(float(stats.spearmanr(pred, truth)[0]), 4)
    return out


def within_groups(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """pred, truth: (groups, group_size). How well the prediction ranks the samples of one prompt, which is
    all a group-relative advantage sees: the Pearson correlation of the group-centred prediction with the
    group-centred truth (pooled), and the mean per-group Pearson over groups where both vary."""
    centred_pred = (pred - pred.mean(1, keepdims=True)).ravel()
    centred_truth = (truth - truth.mean(1, keepdims=True)).ravel()
    varying = (pred.std(1) > 0) & (truth.std(1) > 0)
    out: dict[str, float] = {"groups": len(pred), "groups_varying": int(varying.sum())}
    if varying.any():
        out["centred_pearson"] = round(float(stats.pearsonr(centred_pred, centred_truth)[0]), 4)
        per_group = [stats.pearsonr(p, t)[0] for p, t in zip(pred[varying], truth[varying], strict=True)]
        out["mean_group_pearson"] = round(float(np.mean(per_group)), 4)
    return out


def report(pred: np.ndarray, pairs: LabelledPairs) -> dict[str, Any]:
    """Correlations with the partial truth overall, per source and, where there are groups, within the
    groups of each base checkpoint."""
    out: dict[str, Any] = {"all": correlations(pred, pairs.partial)}
    for source in sorted(set(pairs.source.tolist())):
        keep = pairs.source == source
        out[source] = correlations(pred[keep], pairs.partial[keep])
    members = pairs.groups()
    if members.size:
        group_source = pairs.source[members[:, 0]]
        out["within_groups"] = {}
        for source in sorted(set(group_source.tolist())):
            chosen = members[group_source == source]
            out["within_groups"][source] = within_groups(pred[chosen], pairs.partial[chosen])
    return out


def epoch_batch(n: int, size: int, step: int, seed: Sequence[int]) -> np.ndarray:
    """Indices (size,) into n items for batch ``step``: consecutive slices of epoch-wise permutations
    seeded by (*seed, epoch), so batch ``step`` is the same whatever happened before."""
    positions = np.arange(step * size, (step + 1) * size)
    index = np.empty(size, np.int64)
    for epoch in np.unique(positions // n):
        chosen = positions // n == epoch
        index[chosen] = np.random.default_rng([*seed, int(epoch)]).permutation(n)[positions[chosen] % n]
    return index


def train(
    config: ProxyConfig, pairs: LabelledPairs, *, progress: bool = True
) -> tuple[Any, Any, Any, list[tuple[int, float]]]:
    """Regresses the proxy onto ``pairs.partial`` (mean squared error over ``batch_size`` pairs) plus, with
    ``rank_weight`` > 0, ``rank_weight`` times the squared error of the group-centred scores over
    ``group_batch`` groups (the within-prompt ranking a GRPO advantage reads); returns (graph, params,
    tokenizer, loss readings)."""
    graph, params, tokenizer = build_proxy(
        config.architecture, VOCABULARY, MAX_TOKENS, IMAGE_SIZE, config.model_seed
    )
    tx = warmup_cosine_adamw(
        config.learning_rate,
        config.warmup_steps,
        config.steps,
        final_lr_fraction=0.1,
        grad_clip=1.0,
        weight_decay=config.weight_decay,
    )
    phases = config.architecture.get("phases", 1)
    members = pairs.groups()
    ranked = config.rank_weight > 0 and members.size > 0

    def loss_fn(params, batch, group_batch):
        images, tokens, offsets, target = batch
        loss = jnp.mean(jnp.square(proxy_scores(graph, params, images, tokens, offsets) - target))
        if not ranked:
            return loss
        images, tokens, offsets, target = group_batch
        size = members.shape[1]
        scores = proxy_scores(graph, params, images, tokens, offsets).reshape(-1, size)
        target = target.reshape(-1, size)
        centred = (scores - scores.mean(1, keepdims=True)) - (target - target.mean(1, keepdims=True))
        return loss + config.rank_weight * jnp.mean(jnp.square(centred))

    def step_fn(params, opt_state, batch, group_batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, group_batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step_fn, donate_argnums=(0, 1))
    opt_state = tx.init(params)
    tokens = tokenizer(pairs.prompts)

    def batch_of(index: np.ndarray, i: int, stream: int) -> tuple[np.ndarray, ...]:
        offsets = np.random.default_rng([config.seed, stream, i]).integers(phases, size=(len(index), 2))
        return pairs.images[pairs.image_index[index]], tokens[index], offsets, pairs.partial[index]

    losses: list[tuple[int, float]] = []
    bar = tqdm(range(config.steps), desc="proxy", unit="step", dynamic_ncols=True, disable=not progress)
    for i in bar:
        batch = batch_of(epoch_batch(len(tokens), config.batch_size, i, [config.seed]), i, 2)
        group_batch = None
        if ranked:
            chosen = epoch_batch(len(members), config.group_batch, i, [config.seed, 3])
            group_batch = batch_of(members[chosen].ravel(), i, 4)
        params, opt_state, loss = step(params, opt_state, batch, group_batch)
        if i % config.log_every == 0 or i == config.steps - 1:
            losses.append((i, float(loss)))
            if not np.isfinite(losses[-1][1]):
                raise FloatingPointError(f"loss became {losses[-1][1]} at step {i}; lower learning_rate")
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
    return graph, jax.block_until_ready(params), tokenizer, losses


def run(config: ProxyConfig, *, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Builds the labelled sample, trains, reports and writes the checkpoint; returns its metadata."""
    started = time.perf_counter()
    degradation = Degradation(config.degraded_fraction, config.max_blur, config.max_noise)
    pairs = labelled_pairs(
        split_specs("train"),
        config.renders,
        list(zip(config.base_checkpoints, config.base_samples, strict=True)),
        config.seed,
        degradation,
        group_size=config.base_group_size,
        progress=progress,
    )
    rng = np.random.default_rng([config.seed, 1])
    draw = rng.random(pairs.image_unit.max() + 1)[pairs.image_unit][pairs.image_index]
    validation = pairs.subset(draw < config.validation_fraction)
    training = pairs.subset(draw >= config.validation_fraction)
    # The training fit is reported on as many pairs as validation: scoring averages every view, so scoring
    # all training pairs would cost more than the training itself.
    training_report = pairs.subset(
        (draw >= config.validation_fraction) & (draw < 2 * config.validation_fraction)
    )
    ood_base = [(config.base_checkpoints[0], config.ood_base_samples)] if config.base_checkpoints else []
    ood = labelled_pairs(
        split_specs("held_out"),
        config.ood_renders,
        ood_base,
        config.seed + 1,
        degradation,
        group_size=config.base_group_size,
        progress=progress,
    )
    data_seconds = time.perf_counter() - started
    started = time.perf_counter()
    graph, params, tokenizer, losses = train(config, training, progress=progress)
    train_seconds = time.perf_counter() - started
    metadata = {
        "kind": "shapes_proxy",
        "command": command,
        "architecture": json_ready(config.architecture),
        "vocabulary": list(VOCABULARY),
        "max_length": MAX_TOKENS,
        "image_size": IMAGE_SIZE,
        "model_seed": config.model_seed,
        "config": json_ready(config),
        "num_params": count_params(params),
        "params_sha256": params_hash({"proxy": params}),
        "sample": {
            "training_pairs": len(training.prompts),
            "validation_pairs": len(validation.prompts),
            "label_mean": round(float(training.partial.mean()), 4),
            "label_strict_mean": round(float(training.strict.mean()), 4),
        },
        "eval": {
            "training": report(predict(graph, params, training_report, tokenizer), training_report),
            "validation": report(predict(graph, params, validation, tokenizer), validation),
            "held_out_prompts": report(predict(graph, params, ood, tokenizer), ood),
        },
        "loss": [[s, round(v, 5)] for s, v in losses],
        "seconds": {"data": round(data_seconds, 1), "train": round(train_seconds, 1)},
        "software": software(),
    }
    save_checkpoint(config.output_dir, {"proxy": params}, metadata)
    return metadata


COMMAND = Command(
    "testbed.train_proxy",
    __doc__,
    config_hint="configs/shapes_proxy.py",
    config_help=lambda: "\n".join(describe_fields(ProxyConfig)),
)


def train_proxy_command(parsed: Parsed) -> str:
    """The command's body: validated config -> labelled sample, training, report, checkpoint -> summary."""
    config = load_proxy_config(parsed.config)
    metadata = run(config, command=" ".join([COMMAND.prog, *sys.argv[1:]]))
    val = metadata["eval"]["validation"]["all"]
    ood = metadata["eval"]["held_out_prompts"]["all"]
    return (
        f"done: validation pearson {val.get('pearson', float('nan')):.3f} spearman "
        f"{val.get('spearman', float('nan')):.3f}; held-out prompts pearson {ood.get('pearson', float('nan')):.3f}; "
        f"params sha256 {metadata['params_sha256'][:16]}; saved to {config.output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(train_proxy_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
