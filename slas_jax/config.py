"""Typed, validated run configuration.

Config files are ml_collections ``get_config()`` modules (that is what ``--config configs/X.py`` means);
at start-up the ConfigDict is turned into the frozen dataclasses below, which the code receives explicitly.
Unknown keys, wrong types and bad values raise :class:`ConfigError` with one line naming the field and the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import itertools
import math
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from slas_jax.advantages import ADVANTAGE_METHODS
from slas_jax.errors import ConfigError
from slas_jax.parallel import DEFAULT_RULES, MESH_AXES
from slas_jax.samplers import SAMPLERS


def require(ok: bool, name: str, message: str) -> None:
    """Raises ConfigError("config.<name>: <message>") unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{name}: {message}")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Low-rank adapters on the backbone's Linear layers (``slas_jax.lora``): W x + (alpha / rank) B A x with
    A (rank, in) random and B (out, rank) zero at the start, so the first step samples the base model. Only
    the adapters train and have optimizer state; the KL reference is the base model itself (adapters off)."""

    rank: int = 0
    """Adapter rank; 0: no adapters (every parameter, or ``optim.trainable``'s, trains at full rank)."""
    alpha: float = 0.0
    """Scale numerator: the adapter's update is multiplied by alpha / rank (peft's lora_alpha); > 0."""
    targets: tuple[str, ...] = ()
    """Regular expressions over the dotted paths of the backbone's Linear layers (a kernel's parameter path
    without ``.kernel``, e.g. ``transformer_blocks.attn.to_q``, ``single_transformer_blocks.attn.to_k``);
    each must match at least one layer."""
    dropout: float = 0.0
    """Only 0: the GRPO ratio compares the policy's log-probabilities in two forward passes (rollout and
    re-scoring), which must be the same function for the first update's ratio to be 1."""
    seed: int = 0
    """Initialisation of the A matrices."""

    def validate(self, name: str) -> None:
        require(self.rank >= 0, f"{name}.rank", f"must be >= 0, got {self.rank}")
        require(
            self.dropout == 0,
            f"{name}.dropout",
            f"must be 0 (the rollout and the GRPO re-scoring must be the same function), got {self.dropout}",
        )
        if not self.rank:
            require(not self.targets, f"{name}.targets", "applies with lora.rank > 0 only; set lora.rank")
            return
        require(self.alpha > 0, f"{name}.alpha", f"must be > 0 with lora.rank > 0, got {self.alpha}")
        require(bool(self.targets), f"{name}.targets", "must name the Linear layers to adapt (regexes)")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"config.{name}.targets: {pattern!r} is not a regular expression ({e})"
                ) from None


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The trainable backbone and its frozen companions."""

    family: Literal["unet", "flux"] = "unet"
    """"unet" (eps / v prediction, DDIM) or "flux" (velocity, flow SDE)."""
    checkpoint: str | None = None
    """A diffusers-format folder (or one converted by ``python -m slas_jax.convert``), or None for a randomly
    initialised model in pixel space (no VAE) built from ``architecture`` and ``text_architecture``."""
    architecture: Mapping[str, Any] = field(default_factory=dict)
    """Backbone config fields of a random model (UNetConfig or FluxConfig), checked against the model classes
    by ``slas_jax.pipelines.architectures``."""
    text_architecture: Mapping[str, Any] = field(default_factory=dict)
    """CLIPTextConfig fields of a random model's text encoder, checked the same way."""
    resolution: int = 16
    """Image side in pixels, >= 8."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype; parameters stay float32."""
    frozen_dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the frozen models' floating-point parameters (text encoders, VAE, reward model),
    which are sharded over the mesh like the backbone (``slas_jax.placement``); "bfloat16" halves their
    memory (T5-XXL: 19 GB -> 9.5 GB before sharding) and rounds them to 8 mantissa bits."""
    remat: bool = False
    """Gradient checkpointing per block."""
    seed: int = 0
    """Initialisation of a random model."""
    init_checkpoint: str | None = None
    """A weights folder (``slas_jax.weights``: a testbed base model or an exported policy) whose backbone, and
    text encoder when it holds one, replace the random or ``checkpoint`` ones."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters: train them instead of the backbone's weights."""

    def validate(self, name: str) -> None:
        require(self.resolution >= 8, f"{name}.resolution", f"must be >= 8, got {self.resolution}")
        self.lora.validate(f"{name}.lora")
        for mapping in ("architecture", "text_architecture"):
            require(
                not (self.checkpoint and getattr(self, mapping)),
                f"{name}.{mapping}",
                "applies to randomly initialised models only (model.checkpoint's config.json files fix the "
                "architecture); remove it or unset model.checkpoint",
            )
        # Imported here: slas_jax.pipelines imports this module.
        from slas_jax.pipelines.architectures import check_architecture

        check_architecture(self.family, self.architecture, self.text_architecture, name)


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The stochastic sampler used for rollouts and for re-scoring transitions."""

    name: str = "ddim"
    """Registered sampler (``slas_jax.samplers.SAMPLERS``) of the model's family: "ddim" (eta; unet),
    "flow_sde" (Flow-GRPO, noise level a; flux) or "dance_flow" (DanceGRPO FLUX, eta; flux)."""
    num_steps: int = 10
    """Denoising steps of a rollout (>= 2)."""
    noise_level: float = 1.0
    """eta (ddim, dance_flow) or a (flow_sde): the policy's stochasticity, > 0."""
    schedule: Literal["shift", "dynamic"] = "shift"
    """Flow sigmas shifted by ``shift`` (DanceGRPO / SD3) or "dynamic" (FLUX's resolution-dependent shift from
    the scheduler config)."""
    shift: float = 1.0
    """The flow schedule's shift, > 0."""
    flux_guidance: float = 3.5
    """The distilled guidance value FLUX.1-dev embeds (ignored by models without a guidance embedding)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance against ``negative_prompt``; 1 disables it."""
    negative_prompt: str = ""
    """The unconditional prompt of classifier-free guidance."""
    same_noise_in_group: bool = False
    """All samples of a prompt start from the same noise (DanceGRPO's init_same_noise)."""
    decode: Literal["sample", "prediction"] = "sample"
    """The image comes from the last sample ("sample": DDPO, Flow-GRPO) or the model's clean-sample estimate
    at the last step ("prediction": DanceGRPO)."""
    sde_window: tuple[int, int] | None = None
    """(start, end): only steps [start, end) draw noise, the others take the deterministic step
    (Flow-GRPO-Fast, MixGRPO); the loss must train inside it. None: every step draws."""

    def validate(self, name: str) -> None:
        require(self.num_steps >= 2, f"{name}.num_steps", f"must be >= 2, got {self.num_steps}")
        require(self.noise_level > 0, f"{name}.noise_level", "must be > 0 for a stochastic policy")
        require(self.shift > 0, f"{name}.shift", f"must be > 0, got {self.shift}")
        require(self.guidance_scale >= 1, f"{name}.guidance_scale", "must be >= 1 (1 disables CFG)")
        if self.sde_window is not None:
            start, end = self.sde_window
            require(
                0 <= start < end <= self.num_steps,
                f"{name}.sde_window",
                f"must be (start, end) with 0 <= start < end <= num_steps = {self.num_steps}, got {self.sde_window}",
            )


@dataclass(frozen=True, kw_only=True)
class AdvantageConfig:
    """Group-relative advantages (``slas_jax.advantages``)."""

    method: str = "slas"
    """Registered advantage method: dance_grpo | mean_only | slas | flow_grpo (batch std) |
    flow_grpo_per_prompt (group population std; Flow-GRPO's default, with its eps 1e-4)."""
    gamma: float = 1.0
    """SLAS exponent offset: shaped = sign(d) |d|^(1 + gamma), >= 0."""
    eps: float = 1e-6
    """Added to every standard deviation before dividing, > 0."""
    adv_clip: float | None = 5.0
    """Advantages clipped to +-adv_clip (DanceGRPO, Flow-GRPO: 5); None: no clipping."""
    slas_normalize: Literal["after", "before"] = "after"
    """SLAS divides by the batch std "after" shaping, or divides d by its batch std "before"."""

    def validate(self, name: str) -> None:
        require(
            self.method in ADVANTAGE_METHODS,
            f"{name}.method",
            f"unknown method {self.method!r}; choose one of {', '.join(sorted(ADVANTAGE_METHODS))}",
        )
        require(self.gamma >= 0, f"{name}.gamma", f"must be >= 0, got {self.gamma}")
        require(self.eps > 0, f"{name}.eps", f"must be > 0, got {self.eps}")
        require(
            self.adv_clip is None or self.adv_clip > 0,
            f"{name}.adv_clip",
            "must be > 0 or None (no clipping)",
        )


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Clipped surrogate with an optional KL penalty to the initial policy."""

    clip_range: float = 1e-4
    """PPO ratio clip (DanceGRPO: 1e-4), > 0."""
    kl_beta: float = 0.0
    """Weight of the KL term to the initial policy; 0 disables it and keeps no reference copy."""
    kl_form: Literal["transition", "flow_grpo"] = "transition"
    """The KL the beta weighs: "transition" (KL of the two transition Gaussians: mean squared difference of
    the means over twice the transition variance) or "flow_grpo" (Flow-GRPO's: over twice the per-unit-time
    variance, i.e. the transition KL times sigma_i - sigma_{i+1}; flow samplers only). The same beta is
    1 / (sigma_i - sigma_{i+1}) times stronger as "transition", e.g. 4-112x on 16 shifted steps."""
    timestep_fraction: float = 1.0
    """Fraction of the trainable steps each sample trains on, in (0, 1]."""
    exclude_first_steps: int = 0
    """First (noisiest) transitions never trained, for models whose outcome barely depends on those steps'
    noise."""
    exclude_last_steps: int | None = None
    """Final transitions never trained (DanceGRPO SD trains all but the last); >= 1 with sampler.decode =
    "prediction", whose image the last transition never reaches. None: 1 with "prediction", else 0."""

    def validate(self, name: str) -> None:
        require(self.clip_range > 0, f"{name}.clip_range", f"must be > 0, got {self.clip_range}")
        require(self.kl_beta >= 0, f"{name}.kl_beta", f"must be >= 0, got {self.kl_beta}")
        require(0 < self.timestep_fraction <= 1, f"{name}.timestep_fraction", "must be in (0, 1]")
        require(self.exclude_first_steps >= 0, f"{name}.exclude_first_steps", "must be >= 0")
        require(self.exclude_last_steps >= 0, f"{name}.exclude_last_steps", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with global-norm gradient clipping."""

    learning_rate: float = 1e-5
    """AdamW learning rate, > 0."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay, >= 0."""
    b1: float = 0.9
    """AdamW first-moment decay."""
    b2: float = 0.999
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    grad_clip: float = 1.0
    """Global-norm gradient clipping threshold, > 0."""
    trainable: tuple[str, ...] = ()
    """Regular expressions over the backbone's dotted parameter paths (``slas_jax.param_paths``, e.g.
    ``"attn.(to|add)_"``): only matching parameters are updated, the others keep their pretrained values, as
    Flow-GRPO and DanceGRPO adapt only the attention projections. Empty: every parameter trains."""

    def validate(self, name: str) -> None:
        require(self.learning_rate > 0, f"{name}.learning_rate", "must be > 0")
        require(self.weight_decay >= 0, f"{name}.weight_decay", "must be >= 0")
        require(self.grad_clip > 0, f"{name}.grad_clip", "must be > 0")
        for pattern in self.trainable:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"config.{name}.trainable: {pattern!r} is not a regular expression ({e})"
                ) from None


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The RL loop: ``prompts_per_step`` prompts x ``group_size`` samples per step, split into optimizer
    updates of ``micro_batch_size x grad_accum_steps`` samples each."""

    num_steps: int = 20
    """RL steps of the run, >= 1."""
    prompts_per_step: int = 4
    """Prompts per step, >= 1."""
    group_size: int = 8
    """Samples per prompt, >= 2 (group-relative advantages need two)."""
    micro_batch_size: int = 8
    """Samples per forward/backward; with grad_accum_steps it must divide prompts_per_step x group_size."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated into one optimizer update, >= 1."""
    seed: int = 0
    """Rollout noise and timestep selection."""
    log_every: int = 1
    """Steps between metrics.jsonl lines."""
    checkpoint_every: int = 0
    """Every N steps (and at the end) the train state is saved for resuming, in ``output_dir/checkpoints``
    (written in the background while the loop goes on); 0: never, except when a signal (SIGTERM, SIGINT)
    stops the run, which always saves. Rerunning the same command resumes from the newest intact checkpoint
    (``slas_jax.resume``)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept, >= 1; more of them are more steps back to fall back on when the newest is
    damaged."""
    keep_best_metric: str | None = None
    """A logged metric (e.g. ``reward_mean``, or a fixed set's ``train/reward``): the checkpoint that scored best
    on it is also kept; a checkpoint saved at a step that did not measure it does not compete. None: none."""
    keep_best_mode: Literal["max", "min"] = "max"
    """Whether the best ``keep_best_metric`` is the highest or the lowest."""
    resume_override: bool = False
    """Resume even though config fields outside ``slas_jax.resume.RESUMABLE`` (model, sampler, advantage,
    loss, reward, ...) differ from the checkpoint's; the changes are printed and kept in later checkpoints'
    metadata. Without it such a resume is refused in one line naming the fields."""
    export_every: int = 0
    """Every N steps (and at the end) the policy is written as a weights folder,
    ``output_dir/policy/step_<n>`` (``slas_jax.weights.export_policy``: for resuming, ``load_policy`` and
    ``model.init_checkpoint``); a model from a diffusers folder (``model.checkpoint``) also as a diffusers
    pipeline folder ``output_dir/policy/step_<n>/diffusers`` that diffusers' ``from_pretrained`` loads
    (``slas_jax.pipelines.export``); 0: never."""
    output_dir: str = "runs/default"
    """Where metrics, samples, checkpoints and exports go."""
    tensorboard: bool = True
    """Every logged metric also as TensorBoard event files in ``output_dir/tensorboard`` (process 0)."""
    wandb_project: str | None = None
    """Every logged metric also to this Weights & Biases project (process 0; needs the ``wandb`` extra,
    ``pip install 'slas-jax[wandb]'``); None: no W&B."""
    profile_steps: tuple[int, int] | None = None
    """Steps [start, stop) traced with ``jax.profiler`` into ``output_dir/profile`` (read by TensorBoard's
    profile plugin or Perfetto); start after step 0 to leave compilation out. None: no trace."""

    def validate(self, name: str) -> None:
        require(self.num_steps >= 1, f"{name}.num_steps", "must be >= 1")
        if self.profile_steps is not None:
            start, stop = self.profile_steps
            require(
                0 <= start < stop <= self.num_steps,
                f"{name}.profile_steps",
                f"must be (start, stop) with 0 <= start < stop <= num_steps = {self.num_steps}, "
                f"got {self.profile_steps}",
            )
        require(self.prompts_per_step >= 1, f"{name}.prompts_per_step", "must be >= 1")
        require(
            self.group_size >= 2,
            f"{name}.group_size",
            f"must be >= 2 (group-relative advantages need at least two samples per prompt), got {self.group_size}",
        )
        require(self.micro_batch_size >= 1, f"{name}.micro_batch_size", "must be >= 1")
        require(
            self.checkpoint_every >= 0 and self.export_every >= 0,
            f"{name}.checkpoint_every",
            "checkpoint_every and export_every must be >= 0 (0: never)",
        )
        require(self.grad_accum_steps >= 1, f"{name}.grad_accum_steps", "must be >= 1")
        require(
            "://" not in self.output_dir,
            f"{name}.output_dir",
            f"{self.output_dir} is a remote folder; checkpoints could go there but metrics and reports are "
            "written with local file APIs, so use a local folder (on a TPU VM, a gcsfuse mount of the bucket)",
        )
        require(
            self.keep_checkpoints >= 1,
            f"{name}.keep_checkpoints",
            f"must be >= 1 (the newest is what a rerun resumes from), got {self.keep_checkpoints}",
        )
        require(
            self.keep_best_metric != "",
            f"{name}.keep_best_metric",
            "must name a logged metric, or be None",
        )
        require(
            not self.wandb_project or importlib.util.find_spec("wandb") is not None,
            f"{name}.wandb_project",
            "needs wandb, which is not installed: pip install 'slas-jax[wandb]'",
        )
        samples = self.prompts_per_step * self.group_size
        per_update = self.micro_batch_size * self.grad_accum_steps
        require(
            samples % per_update == 0,
            f"{name}.micro_batch_size",
            f"micro_batch_size x grad_accum_steps = {per_update} must divide prompts_per_step x group_size "
            f"= {samples}",
        )


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Device mesh sizes and the rules that place parameters on it."""

    data: int = -1
    """Data-parallel devices; -1 takes every device left after fsdp x tensor."""
    fsdp: int = 1
    """Devices the parameters are sharded over (fully sharded data parallel)."""
    tensor: int = 1
    """Tensor-parallel devices."""
    rules: tuple[tuple[str, str | None], ...] = DEFAULT_RULES
    """(logical axis, mesh axis) pairs: the parameter dimensions named by the logical axis (``embed``,
    ``mlp``, ``heads``, ``vocab``, ``conv_in``, ``conv_out``, ``norm``, ``layers``; see
    ``slas_jax.models.layers``) are split over the mesh axis ("data", "fsdp", "tensor"), or replicated
    (None). An override replaces the whole table, and a logical axis it leaves out is replicated. A
    dimension the mesh axis does not divide, or whose mesh axis another dimension took, stays replicated;
    the run names each such parameter, with its size, at start-up."""

    def validate(self, name: str) -> None:
        require(self.data == -1 or self.data >= 1, f"{name}.data", "must be >= 1 or -1 (all devices)")
        require(self.fsdp >= 1 and self.tensor >= 1, f"{name}", "fsdp and tensor must be >= 1")
        seen = set()
        for rule in self.rules:
            require(
                isinstance(rule, list | tuple)
                and len(rule) == 2
                and isinstance(rule[0], str)
                and (rule[1] is None or isinstance(rule[1], str)),
                f"{name}.rules",
                f"each rule is a (logical axis, mesh axis or None) pair, got {rule!r}",
            )
            logical, mesh_axis = rule
            require(
                mesh_axis is None or mesh_axis in MESH_AXES,
                f"{name}.rules",
                f"{logical!r} maps to unknown mesh axis {mesh_axis!r}; use one of {', '.join(MESH_AXES)} or None "
                "(replicated)",
            )
            require(logical not in seen, f"{name}.rules", f"{logical!r} has two rules; keep one")
            seen.add(logical)


@dataclass(frozen=True, kw_only=True)
class RewardComponent:
    """One reward of a mix (``reward.components``)."""

    name: str = ""
    """Registered reward name (a JAX reward: it is scored inside the step); required."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of the reward's builder, checked against its signature."""
    weight: float = 1.0
    """Its weight in the mix (any finite number; a negative one penalises)."""
    normalize: bool = False
    """Standardise it over each step's batch before weighting, so that rewards of different scales weigh as
    their weights say."""


MIXED_REWARD = "mix"
"""The ``reward.name`` of a run whose reward is ``reward.components``."""


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """The reward model by registry name (``slas_jax.rewards.REWARDS``), and its keyword options."""

    name: str = "brightness"
    """Registered reward name, e.g. "pickscore", "clip_score", or a plugin's ("shapes", "proxy")."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of the reward's builder, checked against its signature."""
    components: Mapping[str, Any] = field(default_factory=dict)
    """With ``name="mix"``: the mixed rewards by label, each ``{"name", "options", "weight", "normalize"}``
    (:class:`RewardComponent`), e.g. DanceGRPO's HPS-v2.1 + CLIP score; each is logged as ``reward/<label>``
    beside the mixed ``reward_mean``."""
    aggregate: Literal["rewards", "advantages"] = "rewards"
    """Where the components of a mix meet: "rewards" (one advantage of the weighted sum of rewards) or
    "advantages" (the weighted sum of each component's advantages, as MixGRPO and Flow-Factory offer)."""
    on_failure: Literal["error", "drop_group"] = "error"
    """What a sample the reward could not score (a remote server down, timing out or replying badly) or
    scored non-finite does: "error" ends the run with one line naming the reward (and its URL); "drop_group"
    gives every group holding such a sample zero advantages (no gradient) and counts them in the
    ``dropped_groups`` metric; their rewards enter batch-level statistics as ties at the kept rewards' mean."""
    host_chunks: int = 1
    """Host rewards (e.g. "remote") only: the rollout runs as this many chunks of prompts, all dispatched at
    once, so the devices sample chunk k+1 while the host scores chunk k; must divide train.prompts_per_step.
    Each chunk draws its own noise, so the samples differ from an unchunked run's (same distribution)."""

    def component(self, label: str) -> RewardComponent:
        """The typed component ``label`` of ``components``."""
        return from_mapping(RewardComponent, self.components[label], f"reward.components.{label}")

    def validate(self, name: str) -> None:
        from slas_jax.rewards import REWARDS

        if self.name == MIXED_REWARD:
            require(bool(self.components), f"{name}.components", "name='mix' needs at least one component")
            require(
                not self.options, f"{name}.options", "a mix takes no options; give each component its own"
            )
            for label in self.components:
                where = f"{name}.components.{label}"
                require(
                    re.fullmatch(r"[A-Za-z0-9_]+", label) is not None,
                    where,
                    "labels are letters, digits and underscores (they become metric and batch key prefixes)",
                )
                component = self.component(label)
                require(bool(component.name), f"{where}.name", "set it to a registered reward")
                require(
                    math.isfinite(component.weight),
                    f"{where}.weight",
                    f"must be finite, got {component.weight}",
                )
                bind_options(
                    REWARDS.get(component.name, f"{where}.name"), component.options, f"{where}.options"
                )
        else:
            require(
                not self.components,
                f"{name}.components",
                f"apply to name='{MIXED_REWARD}' only; set reward.name={MIXED_REWARD} or remove them",
            )
            require(
                self.aggregate == "rewards",
                f"{name}.aggregate",
                f"applies to name='{MIXED_REWARD}' only (a single reward has one advantage)",
            )
            bind_options(REWARDS.get(self.name, f"{name}.name"), self.options, f"{name}.options")
        require(self.host_chunks >= 1, f"{name}.host_chunks", f"must be >= 1, got {self.host_chunks}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Prompt source by registry name (``slas_jax.data.SOURCES``), with its options."""

    name: str = "brightness"
    """Registered prompt source name, e.g. "text_file", or a plugin's ("shapes", "brightness")."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of the source's builder, checked against its signature."""

    def validate(self, name: str) -> None:
        from slas_jax.data import SOURCES

        bind_options(SOURCES.get(self.name, f"{name}.name"), self.options, f"{name}.options")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation beside the training reward: on when a scorer, held-out rewards or fixed sets are set, and
    for every run of a diffusers-folder backbone (``model.checkpoint``) with a JAX training reward
    (``slas_jax.evaluate.fixed_sets.evaluates``); it writes the sample grids, curves and ``summary.md``."""

    scorer: str | None = None
    """Registered host ground-truth scorer (``slas_jax.scorers.SCORERS``) applied to every step's rollout
    samples and to the fixed sets; None or "": none."""
    every: int = 10
    """Steps between evaluations of the fixed sets, >= 1."""
    sets: Mapping[str, Any] = field(default_factory=dict)
    """Fixed prompt sets by name, each ``{"name": source, "options": {...}}`` (e.g. in-domain and held-out);
    none: the set "train", the first ``num_prompts`` prompts of the training source (``data``)."""
    rewards: Mapping[str, Any] = field(default_factory=dict)
    """Held-out rewards by label, each ``{"name", "options"}`` (registered JAX rewards that do not train, e.g.
    PickScore and CLIP score beside an HPS-v2.1 run), scored on every fixed set's images as ``<set>/<label>``
    beside the training reward's ``<set>/reward``, with the hacking gap ``<set>/gap/<label>``: the training
    reward's gain minus the held-out reward's gain since the first evaluation, each in units of its spread
    over the images of that evaluation."""
    num_prompts: int = 16
    """Prompts of each set evaluated, >= 1."""
    samples_per_prompt: int = 2
    """Images per prompt, >= 1."""
    grid_prompts: int = 8
    """Prompts per set shown in the before/after grids."""
    seed: int = 1234
    """The fixed key of every evaluation, so before and after are paired."""

    def validate(self, name: str) -> None:
        require(self.every >= 1, f"{name}.every", "must be >= 1")
        require(
            self.num_prompts >= 1 and self.samples_per_prompt >= 1,
            name,
            "num_prompts and samples_per_prompt must be >= 1",
        )
        if self.scorer:
            from slas_jax.scorers import SCORERS

            SCORERS.get(self.scorer, f"{name}.scorer")
        for label, spec in self.rewards.items():
            where = f"{name}.rewards.{label}"
            require(
                re.fullmatch(r"[A-Za-z0-9_]+", label) is not None and label not in ("reward", "gap"),
                where,
                "labels are letters, digits and underscores, other than 'reward' and 'gap' (they name metrics)",
            )
            require(isinstance(spec, Mapping) and "name" in spec, where, "needs a reward name")
            unknown = sorted(set(spec) - {"name", "options"})
            require(
                not unknown,
                where,
                f"unknown key {', '.join(unknown)}; a held-out reward has name and options",
            )
            from_mapping(RewardConfig, spec, where).validate(where)
        for set_name, source in self.sets.items():
            where = f"{name}.sets.{set_name}"
            require(isinstance(source, Mapping) and "name" in source, where, "needs a source name")
            unknown = sorted(set(source) - {"name", "options"})
            require(not unknown, where, f"unknown key {', '.join(unknown)}; a set has name and options")
            from_mapping(DataConfig, source, where).validate(where)


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.loss.exclude_last_steps is None:
            last = 1 if self.sampler.decode == "prediction" else 0
            object.__setattr__(self, "loss", dataclasses.replace(self.loss, exclude_last_steps=last))

    def validate(self, name: str = "") -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        require(
            self.loss.exclude_first_steps + self.loss.exclude_last_steps < self.sampler.num_steps,
            "loss.exclude_last_steps",
            f"plus loss.exclude_first_steps must be < sampler.num_steps = {self.sampler.num_steps}",
        )
        if self.sampler.sde_window is not None:
            start, end = self.sampler.sde_window
            trained = (self.loss.exclude_first_steps, self.sampler.num_steps - self.loss.exclude_last_steps)
            require(
                start <= trained[0] and trained[1] <= end,
                "loss.exclude_first_steps",
                f"trains steps [{trained[0]}, {trained[1]}) but only sampler.sde_window = [{start}, {end}) is "
                f"stochastic; set loss.exclude_first_steps >= {start} and loss.exclude_last_steps >= "
                f"{self.sampler.num_steps - end}",
            )
        # The image decoded from the last clean estimate is fixed before the last transition is drawn, so that
        # transition's log-probability gradient is pure noise, and on shifted flow schedules the largest one.
        require(
            self.sampler.decode != "prediction" or self.loss.exclude_last_steps >= 1,
            "loss.exclude_last_steps",
            "must be >= 1 with sampler.decode='prediction': the last transition does not reach the image",
        )
        require(
            self.train.prompts_per_step % self.reward.host_chunks == 0,
            "reward.host_chunks",
            f"must divide train.prompts_per_step = {self.train.prompts_per_step}, got {self.reward.host_chunks}",
        )
        require(
            not (self.model.lora.rank and self.optim.trainable),
            "optim.trainable",
            "does not combine with model.lora (only the adapters train); leave one of them unset",
        )
        sampler_family = SAMPLERS.get(self.sampler.name).family
        require(
            self.loss.kl_form != "flow_grpo" or sampler_family == "flux",
            "loss.kl_form",
            f"'flow_grpo' divides by a flow sampler's per-unit-time variance; {self.sampler.name!r} is not one "
            "(use 'transition')",
        )
        fitting = [name for name in SAMPLERS.names() if SAMPLERS.get(name).family == self.model.family]
        require(
            sampler_family == self.model.family,
            "sampler.name",
            f"{self.sampler.name!r} samples family {sampler_family!r} and does not fit "
            f"model.family={self.model.family!r}; use one of {', '.join(fitting)}",
        )


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is Literal:
        require(value in args, name, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if annotation is float:
        require(
            isinstance(value, int | float) and not isinstance(value, bool),
            name,
            f"must be a number, got {value!r}",
        )
        return float(value)
    if annotation is int:
        require(
            isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}"
        )
        return value
    if annotation is bool:
        require(isinstance(value, bool), name, f"must be true or false, got {value!r}")
        return value
    if annotation is str:
        require(isinstance(value, str), name, f"must be a string, got {value!r}")
        return value
    if origin is tuple and Ellipsis not in args:
        require(
            isinstance(value, list | tuple) and len(value) == len(args),
            name,
            f"must be a tuple of {len(args)} values, got {value!r}",
        )
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if origin is not None and issubclass(origin, Mapping):
        require(isinstance(value, Mapping), name, f"must be a mapping, got {value!r}")
        return types.MappingProxyType(dict(value))
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, name)
    return value


def bind_options(builder: Callable[..., Any], options: Mapping[str, Any], field: str) -> dict[str, Any]:
    """``options`` checked against ``builder``'s keyword parameters: unknown names, values that do not fit
    a parameter's annotation (coerced as config fields are) and missing required parameters raise
    ConfigError naming ``config.<field>.<option>``. Returns the keyword arguments to call it with."""
    target = builder.__init__ if isinstance(builder, type) else builder
    hints = typing.get_type_hints(target)
    parameters = {
        key: p
        for key, p in inspect.signature(builder).parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for key in options:
        require(
            key in parameters,
            f"{field}.{key}",
            f"unknown option; valid options here are {', '.join(parameters) or 'none'}",
        )
    missing = [k for k, p in parameters.items() if p.default is inspect.Parameter.empty and k not in options]
    require(not missing, f"{field}.{missing[0] if missing else ''}", "is required")
    return {
        key: _coerce(value, hints[key], f"{field}.{key}") if key in hints else value
        for key, value in options.items()
    }


def from_mapping(cls: type, values: Any, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a (nested) mapping such as an ml_collections ConfigDict.

    Missing keys take the dataclass defaults; unknown keys and bad values raise ConfigError.
    """
    if hasattr(values, "to_dict"):
        values = values.to_dict()
    require(isinstance(values, Mapping), prefix or "config", f"must be a section (mapping), got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"config.{where}: unknown key; valid keys here are {', '.join(sorted(known))}")
    kwargs = {
        key: _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key) for key, value in values.items()
    }
    return cls(**kwargs)


def load_config(values: Any) -> Config:
    """ConfigDict / mapping -> validated :class:`Config`."""
    config = from_mapping(Config, values)
    config.validate()
    return config


def json_ready(value: Any) -> Any:
    """Config values as JSON (dataclasses and mappings as dicts, tuples as lists)."""
    if dataclasses.is_dataclass(value):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass's fields (the string literal under each field), by name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    return {
        node.target.id: " ".join(following.value.value.split())
        for node, following in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    }


def describe_fields(cls: type, prefix: str = "config") -> list[str]:
    """``prefix.field (default): doc`` for every field of dataclass ``cls``, sections recursively."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines += describe_fields(hints[f.name], f"{prefix}.{f.name}")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}.{f.name} (default {json_ready(default)!r}): {docs.get(f.name, '')}")
    return lines


def describe_config() -> str:
    """Every field of :class:`Config` with its default and documentation, one per line."""
    return "\n".join(describe_fields(Config))


def _default_value(value: Any, annotation: Any) -> Any:
    import ml_collections

    if dataclasses.is_dataclass(value):
        return defaults(value)
    if isinstance(value, Mapping):
        return ml_collections.ConfigDict(dict(value))
    if value is None:
        inner = [typing.get_origin(a) or a for a in typing.get_args(annotation) if a is not type(None)]
        return ml_collections.config_dict.placeholder(inner[0] if inner else str)
    return value


def defaults(instance: Any = None) -> Any:
    """An ml_collections ConfigDict holding every field of :class:`Config` at its default, for config files
    to start from (``c = defaults(); c.model.family = "flux"``) so that any field can then be overridden on
    the command line, also those the file does not set."""
    import ml_collections

    instance = Config() if instance is None else instance
    hints = typing.get_type_hints(type(instance))
    return ml_collections.ConfigDict(
        {
            f.name: _default_value(getattr(instance, f.name), hints[f.name])
            for f in dataclasses.fields(instance)
        }
    )
