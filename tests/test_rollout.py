"""Rollouts: with one initial noise per group and an SDE window, the steps before the window run once per
prompt and the group branches at the window, giving the trajectories of the plain loop over every sample."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from engine_harness import PARAMS, PIPELINE

from slas_jax.rollout import initial_noise, repeat_per_sample, sample_trajectories, shared_steps
from slas_jax.samplers import FlowSampler, shifted_sigmas

PROMPTS, GROUP = 2, 4
COND = jnp.eye(4)[:PROMPTS]
UNCOND = jnp.zeros((1, 4))
SAMPLERS = {
    "ddim": dataclasses.replace(PIPELINE.sampler, sde_window=(3, 5)),
    "flow": FlowSampler(sigmas=shifted_sigmas(6, 3.0), noise_level=0.7, sde_window=(2, 4)),
}


def reference_loop(sampler, key, guidance_scale):
    """Every sample through every step, one Python step at a time, with the rollout's keys."""
    noise_key, step_key = jax.random.split(key)
    x = initial_noise(noise_key, PROMPTS, GROUP, PIPELINE.latent_shape, same_in_group=True)
    cond = repeat_per_sample(COND, GROUP)
    uncond = jnp.broadcast_to(UNCOND, cond.shape)
    latents, log_probs = [], []
    for i in range(sampler.num_steps):
        t = jnp.broadcast_to(sampler.model_time(i), (x.shape[0],))
        pred_c = PIPELINE.denoise(PARAMS, x, t, cond)
        pred = pred_c
        if guidance_scale != 1.0:
            pred_u = PIPELINE.denoise(PARAMS, x, t, uncond)
            pred = pred_u + guidance_scale * (pred_c - pred_u)
        latents.append(x)
        x, log_prob, _, _ = sampler.step(pred, i, x, key=jax.random.fold_in(step_key, i))
        log_probs.append(log_prob)
    return jnp.stack(latents, 1), jnp.stack(log_probs, 1), x


@pytest.mark.parametrize(("name", "guidance_scale"), [("ddim", 3.0), ("flow", 1.0)])
def test_branched_rollout_equals_the_plain_loop(name, guidance_scale):
    sampler = SAMPLERS[name]
    key = jax.random.PRNGKey(7)
    traj = jax.jit(
        lambda params: sample_trajectories(
            PIPELINE.denoise,
            params,
            COND,
            UNCOND,
            key,
            sampler=sampler,
            latent_shape=PIPELINE.latent_shape,
            group_size=GROUP,
            guidance_scale=guidance_scale,
            same_noise_in_group=True,
        )
    )(PARAMS)
    latents, log_probs, final = reference_loop(sampler, key, guidance_scale)
    # float32 rounding of batches of other sizes, relative to the latents' scale (DDIM's reach ~100 here)
    atol = 1e-6 * float(np.abs(latents).max())
    np.testing.assert_allclose(traj.latents, latents, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(traj.log_probs, log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj.final, final, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(traj.next_latents[:, :-1], traj.latents[:, 1:], rtol=0, atol=0)
    start = sampler.sde_window[0]
    grouped = np.asarray(traj.latents).reshape(PROMPTS, GROUP, *traj.latents.shape[1:])
    # One trajectory per group up to the window (bitwise: it was computed once), apart after it.
    assert np.array_equal(grouped[:, :1, : start + 1].repeat(GROUP, 1), grouped[:, :, : start + 1])
    assert not np.allclose(grouped[:, 0, start + 1], grouped[:, 1, start + 1])


@pytest.mark.parametrize(
    ("branch", "traced"), [(True, [PROMPTS, PROMPTS * GROUP]), (False, [PROMPTS * GROUP])]
)
def test_the_shared_steps_run_once_per_prompt(branch, traced):
    """One traced scan body per phase: 3 steps on 2 rows, then 3 on 8; or every step on 8 rows."""
    batch_sizes = []

    def denoise(params, x, t, cond):
        batch_sizes.append(x.shape[0])
        return PIPELINE.denoise(params, x, t, cond)

    jax.eval_shape(
        lambda: sample_trajectories(
            denoise,
            PARAMS,
            COND,
            UNCOND,
            jax.random.PRNGKey(0),
            sampler=SAMPLERS["ddim"],
            latent_shape=PIPELINE.latent_shape,
            group_size=GROUP,
            same_noise_in_group=True,
            branch_groups=branch,
        )
    )
    assert batch_sizes == traced


def test_shared_steps_need_one_noise_per_group_and_a_window():
    windowed = SAMPLERS["ddim"]
    assert shared_steps(windowed, GROUP, same_noise_in_group=True) == 3
    assert shared_steps(windowed, GROUP, same_noise_in_group=False) == 0
    assert shared_steps(windowed, 1, same_noise_in_group=True) == 0
    assert shared_steps(PIPELINE.sampler, GROUP, same_noise_in_group=True) == 0
