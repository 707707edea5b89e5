"""A minimal conditional denoiser and a one-call GRPO step runner, shared by the engine tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slas_jax import grpo, parallel
from slas_jax.config import load_config
from slas_jax.models import layers
from slas_jax.samplers import DDIMSampler, ddim_timesteps, scaled_linear_alphas_cumprod


class ConvDenoiser(nnx.Module):
    """A minimal conditional denoiser: the engine's properties do not depend on the architecture."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv_in = layers.conv(3, 16, 3, rngs=rngs)
        self.time = layers.dense(1, 16, rngs=rngs)
        self.text = layers.dense(4, 16, rngs=rngs)
        self.conv_out = layers.conv(16, 3, 3, rngs=rngs)

    def __call__(self, x, t, cond):
        h = self.conv_in(x) + (self.time(t[:, None] / 1000.0) + self.text(cond))[:, None, None]
        return self.conv_out(jax.nn.silu(h))


GRAPHDEF, PARAMS = nnx.split(ConvDenoiser(nnx.Rngs(0)))
TIMESTEPS, PREV = ddim_timesteps(6, 1000, steps_offset=1)
SAMPLER = DDIMSampler(
    alphas_cumprod=scaled_linear_alphas_cumprod(), timesteps=TIMESTEPS, prev_timesteps=PREV, eta=1.0
)
PIPELINE = grpo.Pipeline(
    denoise=lambda p, x, t, c: nnx.merge(GRAPHDEF, p)(x, t, c),
    encode=lambda frozen, batch: (batch["onehot"], jnp.zeros((1, 4))),
    decode=lambda frozen, x: jnp.clip(x * 0.5 + 0.5, 0.0, 1.0),
    sampler=SAMPLER,
    latent_shape=(8, 8, 3),
)


MESH_TEST_OVERRIDES = {"train": {"group_size": 8, "micro_batch_size": 8}}
"""One prompt whose 8-sample group spreads over all devices: group statistics must stay global."""

SPLIT_BATCH_OVERRIDES = {"train": {"group_size": 2, "micro_batch_size": 16}}
"""With 8 prompts: 16 samples in one update, the prompt batch split over up to 8 data x fsdp devices."""


def brightness(_frozen, images, _batch):
    return images.mean(axis=(1, 2, 3))


def harness_config(overrides, prompts):
    return load_config(
        {
            "train": {
                "prompts_per_step": prompts,
                "group_size": 4,
                "micro_batch_size": 8,
                **overrides.get("train", {}),
            },
            "loss": {"timestep_fraction": 0.5, **overrides.get("loss", {})},
            "sampler": {"num_steps": 6},
            "optim": overrides.get("optim", {}),
            "reward": overrides.get("reward", {}),
        }
    )


def _fresh(config, tx, devices, state, mesh_shape=None):
    """``mesh_shape``: (data, fsdp, tensor) over the first ``devices`` devices (default: all data)."""
    data, fsdp, tensor = mesh_shape or (-1, 1, 1)
    mesh = parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor, devices=jax.devices()[:devices])
    fresh = grpo.init_train_state(jax.tree.map(jnp.copy, PARAMS), {}, tx, config)
    shardings = grpo.state_shardings(fresh, parallel.state_shardings(PARAMS, mesh), {}, mesh)
    return mesh, shardings, jax.device_put(fresh if state is None else state, shardings)


def prompt_batch(prompts):
    """The harness's prompt batch: prompt i conditioned on one-hot i mod 4, (prompts, 4) float32."""
    return {"onehot": np.eye(4, dtype=np.float32)[np.arange(prompts) % 4]}


def run_step(
    overrides, *, devices=1, tx=None, reward=brightness, prompts=2, key=0, steps=1, state=None, mesh=None
):
    """One GRPO step (or ``steps``) of the harness model on ``devices`` devices, ``mesh`` (data, fsdp,
    tensor) sizes over them (default: all data); returns the state and the last metrics."""
    config = harness_config(overrides, prompts)
    tx = tx or grpo.make_optimizer(config)
    mesh, shardings, state = _fresh(config, tx, devices, state, mesh)
    batch = prompt_batch(prompts)
    step = grpo.jit_train_step(
        grpo.make_train_step(PIPELINE, reward, tx, config, mesh), state, shardings, batch, mesh
    )
    metrics = {}
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(key), state.step))
    return state, metrics


@functools.cache
def split_batch_step_on_one_device():
    """(state, metrics) of one SGD(1.0) step on 8 prompts x 2 samples (``SPLIT_BATCH_OVERRIDES``) on one
    device: the reference of the mesh and multi-process tests, computed once per test session."""
    return run_step(SPLIT_BATCH_OVERRIDES, tx=optax.sgd(1.0), prompts=8)


def host_brightness(images, _prompts, _arrays):
    """``brightness`` as a host reward (numpy, no failures)."""
    return images.mean(axis=(1, 2, 3)).astype(np.float32), ()


def run_host_step(overrides, host=host_brightness, *, devices=1, tx=None, prompts=2, key=0, steps=1):
    """``run_step`` through the split step of a host reward (``reward.host_chunks`` chunks); returns the
    state, the last metrics and the HostScoredStep (its ``failures``)."""
    from slas_jax.rewards import Reward
    from slas_jax.rewards.host import HostScoredStep

    config = harness_config(overrides, prompts)
    tx = tx or grpo.make_optimizer(config)
    mesh, shardings, state = _fresh(config, tx, devices, None)
    batch = prompt_batch(prompts)
    chunks = config.reward.host_chunks
    stages = grpo.make_step_stages(PIPELINE, tx, config, mesh)
    compiled = grpo.jit_host_reward_step(
        stages, config, shardings, {"onehot": batch["onehot"][: prompts // chunks]}, mesh
    )
    step = HostScoredStep(compiled, Reward(fn=None, host=host), config.train.group_size, chunks, mesh)
    texts = [f"prompt {i}" for i in range(prompts)]
    metrics = {}
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(key), state.step), texts)
    return state, metrics, step


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])


def record_trained_state(monkeypatch) -> dict:
    """Patches ``grpo.jit_train_step`` so that every compiled step keeps the state it returns under
    ``["state"]`` of the dict returned: the state ``train.run`` ends with, without the seconds an Orbax
    checkpoint would cost to read it back."""
    trained = {}
    compile_step = grpo.jit_train_step

    def recording_jit_train_step(*args, **kwargs):
        step = compile_step(*args, **kwargs)

        def recorded(state, batch, key):
            trained["state"], metrics = step(state, batch, key)
            return trained["state"], metrics

        return recorded

    monkeypatch.setattr(grpo, "jit_train_step", recording_jit_train_step)
    return trained
