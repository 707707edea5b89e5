"""One GRPO training step, end to end and jitted, as five stages that read top to bottom:

1. :func:`rollout` samples a group of trajectories per prompt with the current policy and decodes them;
2. :func:`score` rewards every image and turns the rewards into group-relative advantages
   (:func:`advantages_from_rewards`);
3. :func:`pack_transitions` draws each sample's trained timesteps and lays the transitions out as
   (updates, accum, k, micro, ...): scan axes first, the sharded sample axis last;
4. :func:`update_policy` scans :func:`optimizer_update` over the updates; each accumulates the gradients of
   its micro-batches and of each sample's trained timesteps one timestep at a time (the memory profile
   DanceGRPO uses for large backbones) and applies ``tx`` (:func:`make_optimizer`);
5. :func:`step_metrics` reduces the loss metrics, rewards and advantages to scalars.

:func:`make_train_step` composes them into a pure function of a :class:`TrainState`, a prompt batch and a
PRNG key; :func:`jit_train_step` compiles it as one function with explicit in/out shardings over a
(data, fsdp, tensor) mesh and donates the state. :func:`make_generate` is the rollout stage alone.

A host reward (a remote server, anything that cannot run in JAX) splits the step instead:
:func:`jit_host_reward_step` compiles stage 1 and stages 3 to 5 (:class:`StepStages`) as two functions,
and ``slas_jax.rewards.host`` scores the images on the host in between.

Shapes in the docstrings: P prompts per step, G samples per prompt (sample b from prompt b // G),
B = P x G samples, T sampler steps, K trained timesteps per sample, and B = U x A x M: U optimizer updates
per step, A micro-batches accumulated per update, M samples per micro-batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from slas_jax import lora, parallel, param_paths
from slas_jax.advantages import compute_advantages_with_stats
from slas_jax.config import AdvantageConfig, Config, LossConfig
from slas_jax.losses import Transitions, policy_loss, select_timesteps
from slas_jax.reward_mix import (
    RewardMix,
    component_advantages,
    component_metrics,
    finite_moments,
    mixed_rewards,
)
from slas_jax.rollout import Denoiser, Trajectory, repeat_per_sample, sample_trajectories
from slas_jax.samplers import Sampler

Batch = dict[str, jax.Array]
RewardFn = Callable[[Any, jax.Array, Batch], jax.Array]
LossFn = Callable[[Any, Any, Transitions, Any], tuple[jax.Array, dict[str, jax.Array]]]
"""(trained, fixed, steps, uncond) -> (loss, metrics): :func:`policy_loss` with the run's settings bound; the
gradient is taken of ``trained``, ``fixed`` is what else it reads (:func:`split_trained`)."""


@dataclass(frozen=True)
class Pipeline:
    """The static functions of a text-to-image model; all parameters are passed in explicitly.

    denoise(params, x (b, *latent), t (b,), cond) -> prediction (b, *latent);
    encode(frozen, batch) -> (cond with leading axis prompts, uncond with leading axis 1);
    decode(frozen, latents (b, *latent)) -> images (b, h, w, 3) float32 in [0, 1].
    """

    denoise: Denoiser
    encode: Callable[[Any, Batch], tuple[Any, Any]]
    decode: Callable[[Any, jax.Array], jax.Array]
    sampler: Sampler
    latent_shape: tuple[int, ...]


@struct.dataclass
class TrainState:
    """Everything a step reads and writes. params: the backbone (nnx.State; with ``model.lora``, its base
    weights and the adapters, of which only the adapters train); opt_state: the optimizer's state of the
    trained part (:func:`split_trained`); ref_params: frozen copy for the KL term (None when kl_beta == 0, and
    with LoRA, whose reference is the base weights with the adapters switched off); frozen: text encoder /
    VAE / reward parameters; rng: base PRNG key (uint32[2]); data_index: position of the next prompt batch in
    the data stream."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    data_index: jax.Array
    ref_params: Any
    frozen: Any


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """AdamW behind global-norm clipping, as DanceGRPO's torch.nn.utils.clip_grad_norm_ + AdamW. With
    ``optim.trainable`` the gradients of the other parameters are zeroed before clipping and weight decay
    skips them, so they stay exactly at their pretrained values (their AdamW moments stay zero; the state
    keeps the parameters' structure, so sharding and checkpoints do not change)."""
    o = config.optim
    adamw = functools.partial(optax.adamw, o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
    if not o.trainable:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw(weight_decay=o.weight_decay))

    def trainable(params: Any) -> Any:
        return param_paths.select(params, o.trainable, "optim.trainable")

    def frozen(params: Any) -> Any:
        return jax.tree.map(lambda hit: not hit, trainable(params))

    return optax.chain(
        optax.masked(optax.set_to_zero(), frozen),
        optax.clip_by_global_norm(o.grad_clip),
        adamw(weight_decay=o.weight_decay, mask=trainable),
    )


def split_trained(params: Any, ref_params: Any) -> tuple[Any, Any]:
    """(trained, fixed): the tree the gradient and the optimizer see, and what else the loss reads. With LoRA
    adapters in ``params`` (:mod:`slas_jax.lora`): the adapters and the base weights (the KL reference is
    the base weights with the adapters switched off); otherwise: ``params`` and the reference copy
    ``ref_params`` (None without the KL term). Also on trees of shardings."""
    if lora.has_adapters(params):
        return lora.split(params)
    return params, ref_params


def join_trained(trained: Any, fixed: Any) -> Any:
    """The backbone from :func:`split_trained`'s parts (after an update of ``trained``)."""
    return lora.merge(trained, fixed) if lora.has_adapters(trained) else trained


def init_train_state(
    params: Any, frozen: Any, tx: optax.GradientTransformation, config: Config
) -> TrainState:
    """A fresh state at step 0: optimizer state for the trained part only (LoRA: the adapters); a reference
    copy of params is kept only when the KL term is on without LoRA."""
    keep_reference = config.loss.kl_beta > 0 and not lora.has_adapters(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(split_trained(params, None)[0]),
        rng=jax.random.PRNGKey(config.train.seed),
        data_index=jnp.zeros((), jnp.int32),
        ref_params=jax.tree.map(jnp.copy, params) if keep_reference else None,
        frozen=frozen,
    )


def state_shardings(state: TrainState, param_shardings: Any, frozen_shardings: Any, mesh: Mesh) -> TrainState:
    """Shardings for every field of ``state`` given those of the parameters and of the frozen tree."""
    repl = parallel.replicated(mesh)
    return TrainState(
        step=repl,
        params=param_shardings,
        opt_state=parallel.tree_shardings_like(
            state.opt_state, split_trained(param_shardings, None)[0], mesh
        ),
        rng=repl,
        data_index=repl,
        ref_params=None if state.ref_params is None else param_shardings,
        frozen=frozen_shardings,
    )


def final_latents(traj: Trajectory, decode: str) -> jax.Array:
    """What is decoded into the image: the last sample ("sample", DDPO / Flow-GRPO) or the model's last
    clean-sample estimate ("prediction", DanceGRPO)."""
    return traj.final_prediction if decode == "prediction" else traj.final


def rollout(
    pipeline: Pipeline,
    params: Any,
    frozen: Any,
    batch: Batch,
    key: jax.Array,
    *,
    group_size: int,
    guidance_scale: float,
    same_noise_in_group: bool,
    decode: str,
) -> tuple[Any, Any, Trajectory, jax.Array]:
    """Stage 1: ``group_size`` (G) trajectories per prompt, and the images they decode to.

    batch: prompt-level arrays with leading axis P. Returns cond (pytree, leading axis P) and uncond (leading
    axis 1) from ``pipeline.encode``; the :class:`Trajectory`, batch-first over B = P x G samples (sample b
    from prompt b // G): latents / next_latents (B, T, *latent), log_probs (B, T) float32; and images
    (B, h, w, 3) float32 in [0, 1]. ``same_noise_in_group`` starts a prompt's G samples from one noise;
    ``decode`` is as in :func:`final_latents`.
    """
    cond, uncond = pipeline.encode(frozen, batch)
    traj = sample_trajectories(
        pipeline.denoise,
        params,
        cond,
        uncond,
        key,
        sampler=pipeline.sampler,
        latent_shape=pipeline.latent_shape,
        group_size=group_size,
        guidance_scale=guidance_scale,
        same_noise_in_group=same_noise_in_group,
    )
    images = pipeline.decode(frozen, final_latents(traj, decode))
    return cond, uncond, traj, images


def advantages_from_rewards(
    rewards: jax.Array, *, group_size: int, advantage: AdvantageConfig, drop_nonfinite: bool = False
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Group-relative advantages of one step's rewards, whether they were computed in the step or on the host.

    rewards: (B,) float32, sample b from prompt b // group_size. Returns advantages (P, G) float32 and the
    statistics they used (:func:`compute_advantages_with_stats`). With ``drop_nonfinite``
    (``reward.on_failure="drop_group"``) a group holding a non-finite reward is dropped: its advantages are 0,
    its rewards enter the batch-level statistics as ties at the kept rewards' mean, ``zero_std_fraction``
    counts kept groups only and the stats gain ``dropped_groups`` () float32.
    """
    grouped = rewards.reshape(-1, group_size)
    if drop_nonfinite:
        kept = jnp.all(jnp.isfinite(grouped), axis=1)
        kept_sum = jnp.sum(jnp.where(kept[:, None], grouped, 0.0))
        fill = kept_sum / jnp.maximum(jnp.sum(kept) * group_size, 1)
        grouped = jnp.where(kept[:, None], grouped, fill)
    advantages, stats = compute_advantages_with_stats(
        grouped,
        method=advantage.method,
        gamma=advantage.gamma,
        eps=advantage.eps,
        adv_clip=advantage.adv_clip,
        slas_normalize=advantage.slas_normalize,
    )
    if drop_nonfinite:
        advantages = jnp.where(kept[:, None], advantages, 0.0)
        tied = jnp.max(grouped, axis=1) == jnp.min(grouped, axis=1)
        stats["zero_std_fraction"] = jnp.sum(tied & kept) / jnp.maximum(jnp.sum(kept), 1)
        stats["dropped_groups"] = jnp.sum(~kept).astype(jnp.float32)
    return advantages, stats


def score(
    reward_fn: RewardFn,
    frozen: Any,
    images: jax.Array,
    batch: Batch,
    *,
    group_size: int,
    advantage: AdvantageConfig,
    drop_nonfinite: bool = False,
    mix: RewardMix | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Stage 2 of a JAX reward: rewards and group-relative advantages, inside the step.

    images: (B, h, w, 3) float32, sample b from prompt b // G; batch: prompt-level (leading axis P), repeated
    so that each image is scored against its prompt. Returns rewards (B,) float32, advantages (P, G) float32
    and the statistics they used (:func:`advantages_from_rewards`). With a ``mix``, ``reward_fn`` returns the
    components (B, C); the rewards are their mix (:func:`~slas_jax.reward_mix.mixed_rewards`), the advantages
    are aggregated as ``mix.aggregate`` says and the stats gain each component's ``reward/<label>`` mean.
    """
    scores = reward_fn(frozen, images, repeat_per_sample(batch, group_size)).astype(jnp.float32)
    advantages_of = functools.partial(
        advantages_from_rewards, group_size=group_size, advantage=advantage, drop_nonfinite=drop_nonfinite
    )
    if mix is None:
        return scores, *advantages_of(scores)
    rewards = mixed_rewards(scores, mix)
    if mix.aggregate == "rewards":
        advantages, stats = advantages_of(rewards)
    else:
        advantages, stats = component_advantages(scores, mix, advantages_of)
    return rewards, advantages, {**stats, **component_metrics(scores, mix)}


def _split_updates(x: jax.Array, updates: int, accum: int, micro: int) -> jax.Array:
    """(batch, k, ...) -> (updates, accum, k, micro, ...): scan axes first, the sharded sample axis last."""
    x = x.reshape(updates, accum, micro, *x.shape[1:])
    return jnp.swapaxes(x, 2, 3)


def _shard_micro_axis(x: jax.Array, mesh: Mesh | None, micro: int) -> jax.Array:
    """Spreads axis 3 of (updates, accum, k, micro, ...) over data x fsdp, so that every device re-scores
    its own samples; a micro-batch that does not divide over those devices is left to the compiler."""
    if mesh is None or micro % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return x
    spec = P(None, None, None, parallel.BATCH_AXES, *([None] * (x.ndim - 4)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def pack_transitions(
    traj: Trajectory,
    advantages: jax.Array,
    cond: Any,
    key: jax.Array,
    *,
    num_steps: int,
    loss: LossConfig,
    group_size: int,
    accum: int,
    micro: int,
    mesh: Mesh | None,
) -> Transitions:
    """Stage 3: the transitions the loss re-scores, laid out (U, A, K, M, ...) with U x A x M = B.

    traj: the rollout's trajectories (B, T, ...); advantages: (P, G) float32; cond: prompt-level (leading
    axis P). ``key`` draws each sample's K trained timesteps (:func:`select_timesteps`). latents /
    next_latents (U, A, K, M, *latent), log_probs (U, A, K, M) float32 and step_index (U, A, K, M) int32 are
    taken at those timesteps; each sample's advantage (U, A, K, M) float32 and its prompt's cond are
    repeated over them.
    """
    num_samples = advantages.size
    num_updates = num_samples // (micro * accum)
    index = select_timesteps(
        key,
        num_samples,
        num_steps,
        fraction=loss.timestep_fraction,
        exclude_first=loss.exclude_first_steps,
        exclude_last=loss.exclude_last_steps,
    )
    k = index.shape[1]

    def per_step(x: jax.Array) -> jax.Array:
        picked = jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
        return _shard_micro_axis(_split_updates(picked, num_updates, accum, micro), mesh, micro)

    def per_sample(x: jax.Array) -> jax.Array:
        tiled = jnp.broadcast_to(x[:, None], (x.shape[0], k, *x.shape[1:]))
        return _shard_micro_axis(_split_updates(tiled, num_updates, accum, micro), mesh, micro)

    return Transitions(
        latents=per_step(traj.latents),
        next_latents=per_step(traj.next_latents),
        log_probs=per_step(traj.log_probs),
        step_index=per_step(jnp.broadcast_to(jnp.arange(num_steps), traj.log_probs.shape)),
        advantages=per_sample(advantages.reshape(num_samples)),
        cond=jax.tree.map(per_sample, repeat_per_sample(cond, group_size)),
    )


def accumulate_gradients(
    loss_fn: LossFn, params: Any, fixed: Any, update_data: Transitions, uncond: Any, scale: float
) -> tuple[Any, dict[str, jax.Array]]:
    """The gradient of one optimizer update: the sum of ``scale`` x the gradient of ``loss_fn`` with respect
    to ``params`` (the trained part, :func:`split_trained`; ``fixed`` is the rest) on each (micro-batch,
    timestep) slice (M, ...) of ``update_data`` (A, K, M, ...), one slice at a time so that only one slice's
    activations are alive. uncond: leading axis M. Returns grads (like params) and the loss metrics, each
    (A, K).
    """
    loss_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def one_micro_batch(grads: Any, micro_data: Transitions) -> tuple[Any, dict[str, jax.Array]]:
        def one_timestep(grads: Any, steps: Transitions) -> tuple[Any, dict[str, jax.Array]]:
            (_, metrics), g = loss_and_grad(params, fixed, steps, uncond)
            return jax.tree.map(lambda a, b: a + scale * b, grads, g), metrics

        return jax.lax.scan(one_timestep, grads, micro_data)

    zeros = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(one_micro_batch, zeros, update_data)


def optimizer_update(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    fixed: Any,
    update_data: Transitions,
    uncond: Any,
    scale: float,
) -> tuple[Any, Any, dict[str, jax.Array], jax.Array]:
    """Stage 4, one optimizer update of the trained part ``params`` on ``update_data`` (A, K, M, ...): the
    accumulated gradients (:func:`accumulate_gradients`) go through ``tx``. Returns the new params and
    opt_state, the loss metrics (A, K) each and the gradients' global norm () float32, taken before ``tx``
    clips them."""
    grads, metrics = accumulate_gradients(loss_fn, params, fixed, update_data, uncond, scale)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics, grad_norm


def update_policy(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    fixed: Any,
    data: Transitions,
    uncond: Any,
) -> tuple[Any, Any, dict[str, jax.Array], jax.Array]:
    """Stage 4: the step's U optimizer updates of the trained part ``params`` (``fixed``: the rest the loss
    reads, :func:`split_trained`), scanned over the leading axis of ``data`` (U, A, K, M, ...), each starting
    from the parameters the previous one left. Each update averages its gradients over its
    A x K (micro-batch, timestep) slices. uncond: leading axis 1. Returns the final params and opt_state, the
    loss metrics (U, A, K) each and the grad norms (U,).
    """
    accum, k, micro = data.log_probs.shape[1:]
    uncond_micro = jax.tree.map(lambda a: jnp.broadcast_to(a, (micro, *a.shape[1:])), uncond)
    scale = 1.0 / (accum * k)

    def one_update(carry: tuple[Any, Any], update_data: Transitions) -> tuple[tuple[Any, Any], Any]:
        params, opt_state, metrics, grad_norm = optimizer_update(
            loss_fn, tx, *carry, fixed, update_data, uncond_micro, scale
        )
        return (params, opt_state), (metrics, grad_norm)

    (params, opt_state), (metrics, grad_norms) = jax.lax.scan(one_update, (params, opt_state), data)
    return params, opt_state, metrics, grad_norms


def step_metrics(
    loss_metrics: dict[str, jax.Array],
    grad_norms: jax.Array,
    rewards: jax.Array,
    advantages: jax.Array,
    advantage_stats: dict[str, jax.Array],
    images: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Stage 5: the step's metrics, scalars.

    loss_metrics: (U, A, K) each, averaged, except ``ratio_max_dev`` (the maximum) and ``first_ratio_max_dev``
    / ``first_kl``, taken on the first slice, which no update of this step has seen yet (its ratio is 1);
    grad_norms: (U,), averaged; rewards: (B,) float32; advantages: (P, G) float32. ``reward_nonfinite``
    counts the non-finite rewards (the loop ends a run on them unless groups are dropped, when
    ``advantage_stats`` holds ``dropped_groups`` and ``reward_mean`` / ``reward_std`` are over the finite
    rewards). With ``images`` (B, h, w, 3), they are returned as ``samples/images`` beside ``samples/rewards``
    (B,).
    """
    out = {name: jnp.mean(value) for name, value in loss_metrics.items()}
    out["ratio_max_dev"] = jnp.max(loss_metrics["ratio_max_dev"])
    out["first_ratio_max_dev"] = loss_metrics["ratio_max_dev"][0, 0, 0]
    out["first_kl"] = loss_metrics["kl"][0, 0, 0]
    out["grad_norm"] = jnp.mean(grad_norms)
    if "dropped_groups" in advantage_stats:
        out["reward_mean"], out["reward_std"] = finite_moments(rewards)
        out["dropped_groups"] = advantage_stats["dropped_groups"]
    else:
        out["reward_mean"] = jnp.mean(rewards)
        out["reward_std"] = jnp.std(rewards)
    out["reward_nonfinite"] = jnp.sum(~jnp.isfinite(rewards)).astype(jnp.float32)
    out.update({k: v for k, v in advantage_stats.items() if k.startswith("reward/")})
    out["advantage_abs_mean"] = jnp.mean(jnp.abs(advantages))
    out["zero_std_fraction"] = advantage_stats["zero_std_fraction"]
    if images is not None:
        out["samples/images"] = images
        out["samples/rewards"] = rewards
    return out


Rolled = tuple[Any, Any, Trajectory, jax.Array]
"""The rollout stage's output: cond (leading axis P), uncond (leading axis 1), trajectories (B, T, ...) and
images (B, h, w, 3) float32 in [0, 1]."""


@dataclass(frozen=True)
class StepStages:
    """A step's two halves around the reward, shared by the one-jit step of JAX rewards and the split step of
    host rewards.

    rollout(state, batch (leading axis P), key) -> :data:`Rolled`, stage 1;
    update(state, rolled, rewards (B,), advantages (P, G), advantage_stats, key) -> (new state, metrics),
    stages 3 to 5, ``key`` drawing the trained timesteps.
    """

    rollout: Callable[[TrainState, Batch, jax.Array], Rolled]
    update: Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def make_loss_fn(pipeline: Pipeline, config: Config) -> LossFn:
    """The loss the update differentiates, ``(trained, fixed, steps, uncond) -> (loss, metrics)``:
    :func:`losses.policy_loss` bound to the pipeline's denoiser and sampler and the run's loss settings.
    Full fine-tuning: (params, reference copy or None); ``model.lora``: (adapters, base weights), the policy
    being their merge and the KL reference the base weights with the adapters switched off."""
    lc = config.loss
    loss = functools.partial(
        policy_loss,
        denoise=pipeline.denoise,
        sampler=pipeline.sampler,
        guidance_scale=config.sampler.guidance_scale,
        clip_range=lc.clip_range,
        kl_beta=lc.kl_beta,
        kl_form=lc.kl_form,
    )
    if not config.model.lora.rank:
        return loss

    def lora_loss(
        adapters: Any, base: Any, steps: Transitions, uncond: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        reference = lora.merge(lora.switched_off(adapters), base) if lc.kl_beta > 0 else None
        return loss(lora.merge(adapters, base), reference, steps, uncond)

    return lora_loss


def make_step_stages(
    pipeline: Pipeline,
    tx: optax.GradientTransformation,
    config: Config,
    mesh: Mesh | None = None,
    *,
    return_samples: bool = False,
) -> StepStages:
    """The :class:`StepStages` of a run; see :func:`make_train_step` for ``return_samples``."""
    tc, lc, sc = config.train, config.loss, config.sampler
    loss_fn = make_loss_fn(pipeline, config)

    def rollout_stage(state: TrainState, batch: Batch, key: jax.Array) -> Rolled:
        # The rollout only supplies data: the gradient flows through the loss's re-scoring alone.
        return rollout(
            pipeline,
            jax.lax.stop_gradient(state.params),
            state.frozen,
            batch,
            key,
            group_size=tc.group_size,
            guidance_scale=sc.guidance_scale,
            same_noise_in_group=sc.same_noise_in_group,
            decode=sc.decode,
        )

    def update_stage(
        state: TrainState,
        rolled: Rolled,
        rewards: jax.Array,
        advantages: jax.Array,
        advantage_stats: dict[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        cond, uncond, traj, images = rolled
        data = pack_transitions(
            traj,
            advantages,
            cond,
            key,
            num_steps=pipeline.sampler.num_steps,
            loss=lc,
            group_size=tc.group_size,
            accum=tc.grad_accum_steps,
            micro=tc.micro_batch_size,
            mesh=mesh,
        )
        trained, fixed = split_trained(state.params, state.ref_params)
        trained, opt_state, loss_metrics, grad_norms = update_policy(
            loss_fn, tx, trained, state.opt_state, fixed, data, uncond
        )
        metrics = step_metrics(
            loss_metrics, grad_norms, rewards, advantages, advantage_stats, images if return_samples else None
        )
        new_state = state.replace(
            step=state.step + 1,
            params=join_trained(trained, fixed),
            opt_state=opt_state,
            data_index=state.data_index + tc.prompts_per_step,
        )
        return new_state, metrics

    return StepStages(rollout=rollout_stage, update=update_stage)


def make_train_step(
    pipeline: Pipeline,
    reward_fn: RewardFn,
    tx: optax.GradientTransformation,
    config: Config,
    mesh: Mesh | None = None,
    *,
    return_samples: bool = False,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step of a JAX reward ``(state, batch, key) -> (state, metrics)``, the five stages in
    order; see :func:`jit_train_step`.

    batch: prompt-level arrays with leading axis prompts_per_step (tokens, reward metadata, ...).
    Metrics are scalars; with ``return_samples`` they also hold the rollout's ``samples/images``
    (prompts x group, h, w, 3) and ``samples/rewards`` (prompts x group,), sample b from prompt b // group,
    for host-side evaluation (e.g. a ground-truth scorer beside a learned training reward).
    """
    stages = make_step_stages(pipeline, tx, config, mesh, return_samples=return_samples)
    drop = config.reward.on_failure == "drop_group"
    mix = RewardMix.from_config(config.reward, config.advantage.eps)

    def train_step(
        state: TrainState, batch: Batch, key: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        rollout_key, steps_key = jax.random.split(key)
        rolled = stages.rollout(state, batch, rollout_key)
        rewards, advantages, advantage_stats = score(
            reward_fn,
            state.frozen,
            rolled[3],
            batch,
            group_size=config.train.group_size,
            advantage=config.advantage,
            drop_nonfinite=drop,
            mix=mix,
        )
        return stages.update(state, rolled, rewards, advantages, advantage_stats, steps_key)

    return train_step


def make_generate(pipeline: Pipeline, config: Config) -> Callable[..., jax.Array]:
    """A jitted sampler for evaluation: ``(params, frozen, batch, key) -> images`` of shape
    (prompts x samples_per_prompt, h, w, 3) float32 in [0, 1], the :func:`rollout` stage with the run's
    sampler, CFG and decode, and independent noise for every sample.

    ``samples_per_prompt`` is static (a keyword of the returned function, default 1).
    """
    sc = config.sampler

    def generate(
        params: Any, frozen: Any, batch: Batch, key: jax.Array, samples_per_prompt: int = 1
    ) -> jax.Array:
        *_, images = rollout(
            pipeline,
            params,
            frozen,
            batch,
            key,
            group_size=samples_per_prompt,
            guidance_scale=sc.guidance_scale,
            same_noise_in_group=False,
            decode=sc.decode,
        )
        return images

    return jax.jit(generate, static_argnames="samples_per_prompt")


def jit_global_train_step(
    step_fn: Callable, state: TrainState, shardings: TrainState, batch: Batch, mesh: Mesh
) -> Any:
    """``step_fn`` under jit with explicit shardings (state as given, batch over data x fsdp, key and metrics
    replicated) and the state donated, taking the batch as global arrays; ``batch``: the global batch or
    arrays of its shapes (leading axis P). What :func:`jit_train_step` runs, and what ``slas_jax.plan``
    lowers from abstract arguments."""
    batch_shardings = {name: parallel.batch_sharding(mesh, jnp.shape(v)) for name, v in batch.items()}
    repl = parallel.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_shardings, repl),
        out_shardings=(shardings, repl),
        donate_argnums=0,
    )


def jit_train_step(
    step_fn: Callable, state: TrainState, shardings: TrainState, batch: Batch, mesh: Mesh
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The step of :func:`jit_global_train_step` taking the batch as host arrays, each process's the rows of
    the global batch it holds (``parallel.process_rows``) or the whole batch, joined into global arrays
    (``parallel.global_batch``) before the compiled function runs."""
    return _taking_host_batch(jit_global_train_step(step_fn, state, shardings, batch, mesh), mesh, batch)


def _taking_host_batch(jitted: Callable, mesh: Mesh, example: Batch) -> Callable:
    """``jitted(state, batch, *rest)`` taking the batch as host arrays (this process's rows, or all) of the
    global batch shaped like ``example``: numpy arrays cannot enter a jit whose sharding spans processes."""
    size = jnp.shape(next(iter(example.values())))[0]

    def step(state: TrainState, batch: Batch, *rest: Any) -> Any:
        return jitted(state, parallel.global_batch(mesh, batch, size), *rest)

    return step


@dataclass(frozen=True)
class HostRewardStep:
    """The step of a host reward, compiled as two functions with the reward computed on the host in between.

    rollout(state, batch chunk (leading axis P / C; host arrays, as :func:`jit_train_step` takes them), key)
    -> :data:`Rolled` of that chunk, its images sharded over data x fsdp (so each process can score its own
    rows); it does not donate the state, so the C chunks of a step can all be dispatched before the first is
    scored.
    update(state, chunks: C Rolled, rewards: C arrays (B / C,) float32, key) -> (new state, metrics): the
    chunks concatenated in order (sample b from prompt b // G, as one rollout), then advantages
    (:func:`advantages_from_rewards`) and stages 3 to 5; donates the state.
    """

    rollout: Callable[[TrainState, Batch, jax.Array], Rolled]
    update: Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def _concat_chunks(chunks: list[Rolled]) -> Rolled:
    """C rollouts of consecutive prompt chunks -> one, in order; uncond is the same in every chunk."""
    cond, traj, images = (
        jax.tree.map(lambda *xs: jnp.concatenate(xs), *[chunk[i] for chunk in chunks]) for i in (0, 2, 3)
    )
    return cond, chunks[0][1], traj, images


def jit_host_reward_step(
    stages: StepStages, config: Config, shardings: TrainState, chunk_batch: Batch, mesh: Mesh
) -> HostRewardStep:
    """Compiles the :class:`HostRewardStep` of ``stages`` (state as given, a chunk's batch like
    ``chunk_batch`` over data x fsdp, key and metrics replicated)."""
    batch_shardings = {name: parallel.batch_sharding(mesh, jnp.shape(v)) for name, v in chunk_batch.items()}
    repl = parallel.replicated(mesh)
    drop = config.reward.on_failure == "drop_group"

    def rollout_chunk(state: TrainState, batch: Batch, key: jax.Array) -> Rolled:
        cond, uncond, traj, images = stages.rollout(state, batch, key)
        images = jax.lax.with_sharding_constraint(images, parallel.batch_sharding(mesh, images.shape))
        return cond, uncond, traj, images

    def update(
        state: TrainState, chunks: list[Rolled], rewards: list[jax.Array], key: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        rolled = _concat_chunks(chunks)
        all_rewards = jnp.concatenate(rewards)
        advantages, advantage_stats = advantages_from_rewards(
            all_rewards, group_size=config.train.group_size, advantage=config.advantage, drop_nonfinite=drop
        )
        return stages.update(state, rolled, all_rewards, advantages, advantage_stats, key)

    return HostRewardStep(
        rollout=_taking_host_batch(
            jax.jit(rollout_chunk, in_shardings=(shardings, batch_shardings, repl)), mesh, chunk_batch
        ),
        update=jax.jit(update, out_shardings=(shardings, repl), donate_argnums=0),
    )
