"""One GRPO training step, end to end and jitted: rollout -> reward -> advantages -> clipped loss -> update.

The step is a pure function of a :class:`TrainState`, a prompt batch and a PRNG key. It is compiled with
explicit in/out shardings over a (data, fsdp, tensor) mesh and donates the state. Inside, the
``prompts x group`` samples are split into optimizer updates of ``micro_batch_size x grad_accum_steps``
samples; gradients are accumulated over the micro-batches and over each sample's trained timesteps, one
timestep at a time (the memory profile DanceGRPO uses for large backbones), then clipped by global norm.
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

from slas_jax import parallel, param_paths
from slas_jax.advantages import compute_advantages_with_stats
from slas_jax.config import Config
from slas_jax.losses import Transitions, policy_loss, select_timesteps
from slas_jax.rollout import Denoiser, Trajectory, repeat_per_sample, sample_trajectories
from slas_jax.samplers import Sampler

Batch = dict[str, jax.Array]
RewardFn = Callable[[Any, jax.Array, Batch], jax.Array]


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
    """Everything a step reads and writes. params: trainable backbone (nnx.State); ref_params: frozen copy
    for the KL term (None when kl_beta == 0); frozen: text encoder / VAE / reward parameters; rng: base
    PRNG key (uint32[2]); data_index: position of the next prompt batch in the data stream."""

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


def init_train_state(
    params: Any, frozen: Any, tx: optax.GradientTransformation, config: Config
) -> TrainState:
    """A fresh state at step 0 (a reference copy of params is kept only when the KL term is on)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(config.train.seed),
        data_index=jnp.zeros((), jnp.int32),
        ref_params=jax.tree.map(jnp.copy, params) if config.loss.kl_beta > 0 else None,
        frozen=frozen,
    )


def state_shardings(state: TrainState, param_shardings: Any, frozen_shardings: Any, mesh: Mesh) -> TrainState:
    """Shardings for every field of ``state`` given those of the parameters and of the frozen tree."""
    repl = parallel.replicated(mesh)
    return TrainState(
        step=repl,
        params=param_shardings,
        opt_state=parallel.tree_shardings_like(state.opt_state, param_shardings, mesh),
        rng=repl,
        data_index=repl,
        ref_params=None if state.ref_params is None else param_shardings,
        frozen=frozen_shardings,
    )


def final_latents(traj: Trajectory, decode: str) -> jax.Array:
    """What is decoded into the image: the last sample ("sample", DDPO / Flow-GRPO) or the model's last
    clean-sample estimate ("prediction", DanceGRPO)."""
    return traj.final_prediction if decode == "prediction" else traj.final


def _split_updates(x: jax.Array, updates: int, accum: int, micro: int) -> jax.Array:
    """(batch, k, ...) -> (updates, accum, k, micro, ...): scan axes first, the sharded sample axis last."""
    x = x.reshape(updates, accum, micro, *x.shape[1:])
    return jnp.swapaxes(x, 2, 3)


def make_train_step(
    pipeline: Pipeline,
    reward_fn: RewardFn,
    tx: optax.GradientTransformation,
    config: Config,
    mesh: Mesh | None = None,
    *,
    return_samples: bool = False,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step ``(state, batch, key) -> (state, metrics)``; see :func:`jit_train_step`.

    batch: prompt-level arrays with leading axis prompts_per_step (tokens, reward metadata, ...).
    Metrics are scalars; with ``return_samples`` they also hold the rollout's ``samples/images``
    (prompts x group, h, w, 3) and ``samples/rewards`` (prompts x group,), sample b from prompt b // group,
    for host-side evaluation (e.g. a ground-truth scorer beside a learned training reward).
    """
    tc, lc, sc, ac = config.train, config.loss, config.sampler, config.advantage
    group, micro, accum = tc.group_size, tc.micro_batch_size, tc.grad_accum_steps
    num_samples = tc.prompts_per_step * group
    num_updates = num_samples // (micro * accum)
    batch_devices = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]

    def constrain(x: jax.Array) -> jax.Array:
        if mesh is None or micro % batch_devices:
            return x
        spec = P(None, None, None, parallel.BATCH_AXES, *([None] * (x.ndim - 4)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def train_step(
        state: TrainState, batch: Batch, key: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        rollout_key, steps_key = jax.random.split(key)
        cond, uncond = pipeline.encode(state.frozen, batch)
        traj = sample_trajectories(
            pipeline.denoise,
            jax.lax.stop_gradient(state.params),
            cond,
            uncond,
            rollout_key,
            sampler=pipeline.sampler,
            latent_shape=pipeline.latent_shape,
            group_size=group,
            guidance_scale=sc.guidance_scale,
            same_noise_in_group=sc.same_noise_in_group,
        )
        images = pipeline.decode(state.frozen, final_latents(traj, sc.decode))
        rewards = reward_fn(state.frozen, images, repeat_per_sample(batch, group)).astype(jnp.float32)
        adv, adv_stats = compute_advantages_with_stats(
            rewards.reshape(tc.prompts_per_step, group),
            method=ac.method,
            gamma=ac.gamma,
            eps=ac.eps,
            adv_clip=ac.adv_clip,
            slas_normalize=ac.slas_normalize,
        )
        index = select_timesteps(
            steps_key,
            num_samples,
            pipeline.sampler.num_steps,
            fraction=lc.timestep_fraction,
            exclude_first=lc.exclude_first_steps,
            exclude_last=lc.exclude_last_steps,
        )
        k = index.shape[1]

        def per_step(x: jax.Array) -> jax.Array:
            picked = jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
            return constrain(_split_updates(picked, num_updates, accum, micro))

        def per_sample(x: jax.Array) -> jax.Array:
            tiled = jnp.broadcast_to(x[:, None], (x.shape[0], k, *x.shape[1:]))
            return constrain(_split_updates(tiled, num_updates, accum, micro))

        data = Transitions(
            latents=per_step(traj.latents),
            next_latents=per_step(traj.next_latents),
            log_probs=per_step(traj.log_probs),
            step_index=per_step(
                jnp.broadcast_to(jnp.arange(pipeline.sampler.num_steps), traj.log_probs.shape)
            ),
            advantages=per_sample(adv.reshape(num_samples)),
            cond=jax.tree.map(per_sample, repeat_per_sample(cond, group)),
        )
        uncond_micro = jax.tree.map(lambda a: jnp.broadcast_to(a, (micro, *a.shape[1:])), uncond)
        loss_and_grad = jax.value_and_grad(policy_loss, has_aux=True)
        scale = 1.0 / (accum * k)

        def one_update(carry, update_data):
            params, opt_state = carry

            def one_micro_batch(grads, micro_data):
                def one_timestep(grads, steps):
                    (_, metrics), g = loss_and_grad(
                        params,
                        state.ref_params,
                        steps,
                        uncond_micro,
                        denoise=pipeline.denoise,
                        sampler=pipeline.sampler,
                        guidance_scale=sc.guidance_scale,
                        clip_range=lc.clip_range,
                        kl_beta=lc.kl_beta,
                    )
                    return jax.tree.map(lambda a, b: a + scale * b, grads, g), metrics

                return jax.lax.scan(one_timestep, grads, micro_data)

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, metrics = jax.lax.scan(one_micro_batch, zeros, update_data)
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (metrics, grad_norm)

        (params, opt_state), (metrics, grad_norms) = jax.lax.scan(
            one_update, (state.params, state.opt_state), data
        )
        out = {name: jnp.mean(value) for name, value in metrics.items()}
        out["ratio_max_dev"] = jnp.max(metrics["ratio_max_dev"])
        out["first_ratio_max_dev"] = metrics["ratio_max_dev"][0, 0, 0]
        out["first_kl"] = metrics["kl"][0, 0, 0]
        out["grad_norm"] = jnp.mean(grad_norms)
        out["reward_mean"] = jnp.mean(rewards)
        out["reward_std"] = jnp.std(rewards)
        out["advantage_abs_mean"] = jnp.mean(jnp.abs(adv))
        out["zero_std_fraction"] = adv_stats["zero_std_fraction"]
        if return_samples:
            out["samples/images"] = images
            out["samples/rewards"] = rewards
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            data_index=state.data_index + tc.prompts_per_step,
        )
        return new_state, out

    return train_step


def make_generate(pipeline: Pipeline, config: Config) -> Callable[..., jax.Array]:
    """A jitted sampler for evaluation: ``(params, frozen, batch, key) -> images`` of shape
    (prompts x samples_per_prompt, h, w, 3) float32 in [0, 1], with the run's sampler, CFG and noise.

    ``samples_per_prompt`` is static (a keyword of the returned function, default 1).
    """
    sc = config.sampler

    def generate(
        params: Any, frozen: Any, batch: Batch, key: jax.Array, samples_per_prompt: int = 1
    ) -> jax.Array:
        cond, uncond = pipeline.encode(frozen, batch)
        traj = sample_trajectories(
            pipeline.denoise,
            params,
            cond,
            uncond,
            key,
            sampler=pipeline.sampler,
            latent_shape=pipeline.latent_shape,
            group_size=samples_per_prompt,
            guidance_scale=sc.guidance_scale,
            same_noise_in_group=False,
        )
        return pipeline.decode(frozen, final_latents(traj, sc.decode))

    return jax.jit(generate, static_argnames="samples_per_prompt")


def jit_train_step(
    step_fn: Callable, state: TrainState, shardings: TrainState, batch: Batch, mesh: Mesh
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Compiles ``step_fn`` with explicit shardings (state as given, batch over data x fsdp, key and metrics
    replicated) and donates the state."""
    batch_shardings = {name: parallel.batch_sharding(mesh, jnp.shape(v)) for name, v in batch.items()}
    repl = parallel.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_shardings, repl),
        out_shardings=(shardings, repl),
        donate_argnums=0,
    )
