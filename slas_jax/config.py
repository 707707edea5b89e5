"""Typed, validated run configuration.

Config files are ml_collections ``get_config()`` modules (that is what ``--config configs/X.py`` means);
at start-up the ConfigDict is turned into the frozen dataclasses below, which the code receives explicitly.
Unknown keys, wrong types and bad values raise :class:`ConfigError` with one line naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from slas_jax.advantages import ADVANTAGE_METHODS
from slas_jax.errors import ConfigError


def require(ok: bool, name: str, message: str) -> None:
    """Raises ConfigError("config.<name>: <message>") unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{name}: {message}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The trainable backbone and its frozen companions.

    family: "unet" (eps / v prediction, DDIM) or "flux" (velocity, flow SDE); checkpoint: a diffusers-format
    folder, or None for a randomly initialised model in pixel space (no VAE) built from ``architecture``
    (backbone config fields) and ``text_architecture`` (text encoder config fields); resolution: image side
    in pixels; dtype: compute dtype, parameters stay float32; remat: gradient checkpointing per block;
    seed: initialisation of a random model; init_checkpoint: a project checkpoint (``python -m
    slas_jax.pretrain``) whose backbone and text encoder weights replace the random ones.
    """

    family: Literal["unet", "flux"] = "unet"
    checkpoint: str | None = None
    architecture: Mapping[str, Any] = field(default_factory=dict)
    text_architecture: Mapping[str, Any] = field(default_factory=dict)
    resolution: int = 16
    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False
    seed: int = 0
    init_checkpoint: str | None = None

    def validate(self, name: str) -> None:
        require(
            not (self.checkpoint and self.init_checkpoint),
            f"{name}.init_checkpoint",
            "applies to randomly initialised models only; unset it or model.checkpoint",
        )
        require(self.resolution >= 8, f"{name}.resolution", f"must be >= 8, got {self.resolution}")


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The stochastic sampler used for rollouts and for re-scoring transitions.

    name: "ddim" (eta), "flow_sde" (Flow-GRPO, noise_level a) or "dance_flow" (DanceGRPO FLUX, eta);
    noise_level: eta or a; schedule: flow sigmas shifted by ``shift`` (DanceGRPO / SD3) or "dynamic"
    (FLUX's resolution-dependent shift from the scheduler config); flux_guidance: the distilled guidance
    value FLUX.1-dev embeds (ignored by models without a guidance embedding); guidance_scale: CFG (1 disables it) against
    ``negative_prompt``;
    same_noise_in_group: all samples of a prompt start from the same noise (DanceGRPO's init_same_noise);
    decode: the image is decoded from the last sample ("sample": DDPO, Flow-GRPO) or from the model's
    clean-sample estimate at the last step ("prediction": DanceGRPO);
    sde_window: (start, end) step indices: only steps [start, end) draw noise, the others take the
    deterministic step (Flow-GRPO-Fast, MixGRPO). The loss must train inside it. None: every step draws.
    """

    name: Literal["ddim", "flow_sde", "dance_flow"] = "ddim"
    num_steps: int = 10
    noise_level: float = 1.0
    schedule: Literal["shift", "dynamic"] = "shift"
    shift: float = 1.0
    flux_guidance: float = 3.5
    guidance_scale: float = 1.0
    negative_prompt: str = ""
    same_noise_in_group: bool = False
    decode: Literal["sample", "prediction"] = "sample"
    sde_window: tuple[int, int] | None = None

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
    """See ``slas_jax.advantages``: method in dance_grpo | mean_only | slas | flow_grpo."""

    method: str = "slas"
    gamma: float = 1.0
    eps: float = 1e-6
    adv_clip: float | None = 5.0
    slas_normalize: Literal["after", "before"] = "after"

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
    """Clipped surrogate with an optional KL penalty to the initial policy.

    clip_range: PPO ratio clip (DanceGRPO 1e-4); kl_beta: weight of the Flow-GRPO KL term (0 disables it and
    keeps no reference copy); timestep_fraction: fraction of the trainable steps each sample trains on;
    exclude_first_steps: first (noisiest) transitions never trained, for models whose outcome barely depends
    on those steps' noise (their log-prob gradients are then mostly noise; see configs/shapes_cpu.py);
    exclude_last_steps: final transitions never trained (DanceGRPO SD trains all but the last); at least 1
    when the sampler decodes its last clean estimate (``sampler.decode = "prediction"``), which the last
    transition never reaches.
    """

    clip_range: float = 1e-4
    kl_beta: float = 0.0
    timestep_fraction: float = 1.0
    exclude_first_steps: int = 0
    exclude_last_steps: int = 0

    def validate(self, name: str) -> None:
        require(self.clip_range > 0, f"{name}.clip_range", f"must be > 0, got {self.clip_range}")
        require(self.kl_beta >= 0, f"{name}.kl_beta", f"must be >= 0, got {self.kl_beta}")
        require(0 < self.timestep_fraction <= 1, f"{name}.timestep_fraction", "must be in (0, 1]")
        require(self.exclude_first_steps >= 0, f"{name}.exclude_first_steps", "must be >= 0")
        require(self.exclude_last_steps >= 0, f"{name}.exclude_last_steps", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with global-norm gradient clipping.

    trainable: regular expressions over the backbone's dotted parameter paths (``slas_jax.param_paths``,
    e.g. ``"attn.(to|add)_"``); when given, only matching parameters are updated and the others keep
    their pretrained values, the way Flow-GRPO and DanceGRPO put LoRA adapters on the attention projections
    only (empty: every parameter trains).
    """

    learning_rate: float = 1e-5
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    trainable: tuple[str, ...] = ()

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
    """The RL loop: ``prompts_per_step`` prompts x ``group_size`` samples per step.

    Samples are split into optimizer updates of ``micro_batch_size x grad_accum_steps`` samples each.
    ``checkpoint_every`` N steps (and at the end) the train state is saved for resuming; ``export_every`` N
    steps (and at the end) the policy is written as a base-model checkpoint,
    ``output_dir/policy/step_<n>`` (project base models only: :func:`slas_jax.pipelines.pretrained.export_policy`).
    """

    num_steps: int = 20
    prompts_per_step: int = 4
    group_size: int = 8
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 0
    export_every: int = 0
    output_dir: str = "runs/default"

    def validate(self, name: str) -> None:
        require(self.num_steps >= 1, f"{name}.num_steps", "must be >= 1")
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
    """Device mesh sizes; data=-1 takes every device left after fsdp x tensor."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def validate(self, name: str) -> None:
        require(self.data == -1 or self.data >= 1, f"{name}.data", "must be >= 1 or -1 (all devices)")
        require(self.fsdp >= 1 and self.tensor >= 1, f"{name}", "fsdp and tensor must be >= 1")


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """The reward model by registry name, and its keyword options."""

    name: str = "brightness"
    options: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, name: str) -> None:
        from slas_jax.rewards import REWARDS

        require(
            self.name in REWARDS,
            f"{name}.name",
            f"unknown reward {self.name!r}; choose one of {', '.join(sorted(REWARDS))}",
        )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Prompt source by registry name (e.g. "brightness", "shapes"), with its options."""

    name: str = "brightness"
    options: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, name: str) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation beside the training reward (off when ``scorer`` is None).

    scorer: host ground-truth scorer (``slas_jax.evaluate.SCORERS``), applied to every step's rollout
    samples and, every ``every`` steps, to ``num_prompts`` fixed prompts of each set in ``sets``
    ({name: {"name": source, "options": {...}}}, e.g. in-domain and held-out), ``samples_per_prompt``
    each, with a fixed key ``seed``; ``grid_prompts`` prompts per set go into the before/after grids.
    """

    scorer: str | None = None
    every: int = 10
    sets: Mapping[str, Any] = field(default_factory=dict)
    num_prompts: int = 16
    samples_per_prompt: int = 2
    grid_prompts: int = 8
    seed: int = 1234

    def validate(self, name: str) -> None:
        require(self.every >= 1, f"{name}.every", "must be >= 1")
        require(
            self.num_prompts >= 1 and self.samples_per_prompt >= 1,
            name,
            "num_prompts and samples_per_prompt must be >= 1",
        )
        for set_name, source in self.sets.items():
            require(
                isinstance(source, Mapping) and "name" in source,
                f"{name}.sets.{set_name}",
                "needs a source name",
            )


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
        flow_model = self.model.family == "flux"
        flow_sampler = self.sampler.name in ("flow_sde", "dance_flow")
        require(
            flow_model == flow_sampler,
            "sampler.name",
            f"{self.sampler.name!r} does not fit model.family={self.model.family!r}; use ddim with unet, "
            "flow_sde or dance_flow with flux",
        )
        require(
            not self.train.export_every or bool(self.model.init_checkpoint),
            "train.export_every",
            "exports the policy as a base-model checkpoint, so it needs model.init_checkpoint (a project base "
            "model written by `python -m slas_jax.pretrain`)",
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
