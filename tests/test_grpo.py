"""GRPO step properties: ratio 1 on the first inner update, zero KL at the reference, accumulation equals
one large step, zero gradient for all-equal rewards, and the same update on meshes of 1, 2 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from engine_harness import MESH_TEST_OVERRIDES, PARAMS, flat, run_step

from slas_jax.config import ConfigError


def test_first_inner_update_has_ratio_one():
    _, metrics = run_step({"train": {"micro_batch_size": 2}})
    assert float(metrics["first_ratio_max_dev"]) < 1e-5
    assert float(metrics["ratio_max_dev"]) > 1e-4, "later updates must see a changed policy"


def test_kl_is_zero_at_the_reference_and_grows_after():
    state, metrics = run_step({"train": {"micro_batch_size": 2}, "loss": {"kl_beta": 0.1}}, steps=2)
    after_one_update = float(metrics["first_kl"])
    assert after_one_update > 1e-6
    _, first = run_step({"train": {"micro_batch_size": 2}, "loss": {"kl_beta": 0.1}})
    # The policy and the reference means come out of differently compiled computations, so float32 rounding
    # leaves a KL of ~5e-10 on some CPUs (5e-4 after one update): zero up to that noise.
    assert abs(float(first["first_kl"])) < 1e-5 * after_one_update, (
        "policy == reference must give KL 0 (up to float32 rounding)"
    )
    assert state.ref_params is not None


def test_gradient_accumulation_equals_one_large_step():
    sgd = optax.sgd(1.0)
    big, _ = run_step({"train": {"micro_batch_size": 8, "grad_accum_steps": 1}}, tx=sgd)
    small, _ = run_step({"train": {"micro_batch_size": 2, "grad_accum_steps": 4}}, tx=sgd)
    delta_big = flat(big.params) - flat(PARAMS)
    delta_small = flat(small.params) - flat(PARAMS)
    assert np.abs(delta_big).max() > 1e-4
    np.testing.assert_allclose(delta_small, delta_big, rtol=1e-4, atol=1e-6)


def test_all_equal_rewards_give_zero_policy_gradient():
    state, metrics = run_step(
        {}, reward=lambda f, images, b: jnp.full(images.shape[0], 0.7), tx=optax.sgd(1.0)
    )
    assert float(metrics["grad_norm"]) == 0.0
    np.testing.assert_array_equal(flat(state.params), flat(PARAMS))


def test_only_the_trainable_parameters_move():
    """optim.trainable (LoRA-style partial fine-tuning): the other parameters keep their values exactly,
    also on a mesh (the optimizer state keeps the parameters' structure and shardings)."""
    state, _ = run_step({"optim": {"trainable": ("conv_out",), "learning_rate": 1e-2}}, devices=2, steps=2)
    before_leaves = jax.tree_util.tree_flatten_with_path(PARAMS)[0]
    for (path, before), after in zip(before_leaves, jax.tree.leaves(state.params), strict=True):
        after = np.asarray(after)
        if "conv_out" in jax.tree_util.keystr(path):
            assert np.abs(after - np.asarray(before)).max() > 1e-5, "a trainable parameter must move"
        else:
            np.testing.assert_array_equal(after, np.asarray(before))


def test_trainable_pattern_that_matches_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"config.optim.trainable: 'nope' matches no backbone parameter"):
        run_step({"optim": {"trainable": ("nope",)}})


@pytest.mark.parametrize("devices", [2, 8])
def test_same_update_on_1_2_and_8_devices(devices):
    """One prompt whose 8-sample group is spread over all devices: group statistics must stay global."""
    sgd = optax.sgd(1.0)
    ref, ref_metrics = run_step(MESH_TEST_OVERRIDES, tx=sgd, prompts=1)
    out, metrics = run_step(MESH_TEST_OVERRIDES, tx=sgd, prompts=1, devices=devices)
    np.testing.assert_allclose(float(metrics["reward_mean"]), float(ref_metrics["reward_mean"]), rtol=1e-5)
    np.testing.assert_allclose(flat(out.params), flat(ref.params), rtol=1e-4, atol=2e-6)


def test_return_samples_gives_the_rollout_images_and_rewards():
    from engine_harness import PIPELINE, brightness

    import slas_jax.grpo as grpo
    from slas_jax.config import load_config

    config = load_config({"train": {"prompts_per_step": 2, "group_size": 4, "micro_batch_size": 8}})
    tx = grpo.make_optimizer(config)
    state = grpo.init_train_state(jax.tree.map(jnp.copy, PARAMS), {}, tx, config)
    step = jax.jit(grpo.make_train_step(PIPELINE, brightness, tx, config, return_samples=True))
    _, metrics = step(state, {"onehot": jnp.eye(4)[:2]}, jax.random.PRNGKey(0))
    images, rewards = metrics["samples/images"], metrics["samples/rewards"]
    assert images.shape == (8, 8, 8, 3) and rewards.shape == (8,)
    np.testing.assert_allclose(rewards, images.mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward_mean"]), float(rewards.mean()), rtol=1e-6)


def test_generate_is_deterministic_per_key_and_distinct_across_samples():
    from engine_harness import PIPELINE

    import slas_jax.grpo as grpo
    from slas_jax.config import load_config

    generate = grpo.make_generate(PIPELINE, load_config({}))
    batch = {"onehot": jnp.eye(4)[:3]}
    a = generate(PARAMS, {}, batch, jax.random.PRNGKey(1), samples_per_prompt=2)
    b = generate(PARAMS, {}, batch, jax.random.PRNGKey(1), samples_per_prompt=2)
    assert a.shape == (6, 8, 8, 3) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a[0] - a[1]).max()) > 1e-3


def test_generate_is_the_rollout_stage_and_score_groups_by_prompt():
    from engine_harness import PIPELINE, brightness

    import slas_jax.grpo as grpo
    from slas_jax.config import load_config

    config = load_config({})
    batch, key = {"onehot": jnp.eye(4)[:3]}, jax.random.PRNGKey(5)

    def stage(params, batch, key):
        return grpo.rollout(
            PIPELINE,
            params,
            {},
            batch,
            key,
            group_size=2,
            guidance_scale=config.sampler.guidance_scale,
            same_noise_in_group=False,
            decode=config.sampler.decode,
        )

    cond, uncond, traj, images = jax.eval_shape(stage, PARAMS, batch, key)
    assert cond.shape == (3, 4) and uncond.shape == (1, 4)
    assert traj.latents.shape == (6, PIPELINE.sampler.num_steps, 8, 8, 3)
    assert traj.log_probs.shape == (6, PIPELINE.sampler.num_steps) and traj.log_probs.dtype == jnp.float32
    assert images.shape == (6, 8, 8, 3) and images.dtype == jnp.float32
    # Only the images are returned: a program that also returns the trajectory compiles to other fusions,
    # whose float32 rounding differs in the last bits.
    images = jax.jit(lambda *args: stage(*args)[3])(PARAMS, batch, key)
    generated = grpo.make_generate(PIPELINE, config)(PARAMS, {}, batch, key, samples_per_prompt=2)
    np.testing.assert_array_equal(generated, images)

    rewards, advantages, stats = grpo.score(
        brightness, {}, images, batch, group_size=2, advantage=config.advantage
    )
    assert rewards.shape == (6,) and rewards.dtype == jnp.float32
    assert advantages.shape == (3, 2) and advantages.dtype == jnp.float32
    assert float(stats["zero_std_fraction"]) == 0.0
    np.testing.assert_allclose(rewards, images.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_pack_transitions_puts_sample_b_at_update_accum_micro_with_its_own_timesteps():
    """Sample b = (u * accum + a) * micro + m lands at [u, a, :, m], with its trained steps, its advantage and
    its prompt's cond."""
    import slas_jax.grpo as grpo
    from slas_jax.config import LossConfig
    from slas_jax.rollout import Trajectory

    prompts, group, steps, accum, micro = 2, 4, 6, 2, 2
    samples = prompts * group
    code = jnp.arange(samples)[:, None] * 100.0 + jnp.arange(steps)
    traj = Trajectory(
        latents=code[..., None],
        next_latents=code[..., None] + 0.5,
        log_probs=code,
        final=jnp.zeros((samples, 1)),
        final_prediction=jnp.zeros((samples, 1)),
    )
    loss = LossConfig(timestep_fraction=0.5, exclude_first_steps=1, exclude_last_steps=1)
    data = grpo.pack_transitions(
        traj,
        jnp.arange(samples, dtype=jnp.float32).reshape(prompts, group),
        jnp.arange(prompts, dtype=jnp.float32)[:, None],
        jax.random.PRNGKey(0),
        num_steps=steps,
        loss=loss,
        group_size=group,
        accum=accum,
        micro=micro,
        mesh=None,
    )
    updates, k = samples // (accum * micro), 2
    assert data.latents.shape == (updates, accum, k, micro, 1)
    assert (
        data.log_probs.shape == data.advantages.shape == data.step_index.shape == (updates, accum, k, micro)
    )
    assert data.log_probs.dtype == data.advantages.dtype == jnp.float32 and data.step_index.dtype == jnp.int32
    b = (
        np.arange(updates)[:, None, None, None] * accum + np.arange(accum)[:, None, None]
    ) * micro + np.arange(micro)
    b = np.broadcast_to(b, data.log_probs.shape)
    np.testing.assert_array_equal(data.advantages, b)
    np.testing.assert_array_equal(data.log_probs, b * 100.0 + data.step_index)
    np.testing.assert_array_equal(data.latents[..., 0], data.log_probs)
    np.testing.assert_array_equal(data.next_latents[..., 0], data.log_probs + 0.5)
    np.testing.assert_array_equal(data.cond[..., 0], b // group)
    step_index = np.asarray(data.step_index)
    assert step_index.min() >= 1 and step_index.max() <= steps - 2
    assert (step_index[:, :, 0] != step_index[:, :, 1]).all(), "a sample's k trained steps are distinct"


@pytest.mark.parametrize("devices", [1, 8])
def test_host_reward_step_computes_the_one_jit_step(devices):
    """The split step (rollout jit, reward on the host, update jit) equals the one-jit step of the same reward
    up to float32 rounding (the two programs fuse differently)."""
    from engine_harness import run_host_step

    overrides = {"train": {"micro_batch_size": 2}}
    fused, fused_metrics = run_step(overrides, devices=devices, steps=2)
    split, split_metrics, _ = run_host_step(overrides, devices=devices, steps=2)
    for name, value in fused_metrics.items():
        np.testing.assert_allclose(
            float(split_metrics[name]), float(value), rtol=1e-4, atol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(flat(split.params), flat(fused.params), rtol=1e-4, atol=1e-7)
    assert split_metrics["host_reward_s"] >= 0.0 and split_metrics["host_wait_s"] >= 0.0


def test_host_reward_chunks_score_every_sample_against_its_prompt():
    """With reward.host_chunks=2 each chunk's rows reach the host reward with their own prompts, in order."""
    from engine_harness import host_brightness, run_host_step

    seen = []

    def host(images, prompts, arrays):
        seen.append(list(prompts))
        return host_brightness(images, prompts, arrays)

    _, metrics, _ = run_host_step({"reward": {"host_chunks": 2}}, host, prompts=4)
    assert seen == [["prompt 0"] * 4 + ["prompt 1"] * 4, ["prompt 2"] * 4 + ["prompt 3"] * 4]
    assert float(metrics["reward_nonfinite"]) == 0.0 and np.isfinite(float(metrics["policy_loss"]))


def _first_group_set_to(value):
    """Brightness, ``value`` for the first prompt's four samples."""

    def reward(_frozen, images, _batch):
        return images.mean(axis=(1, 2, 3)).at[:4].set(value)

    return reward


_nan_first_group = _first_group_set_to(jnp.nan)


def test_nonfinite_rewards_are_counted_in_the_step():
    """on_failure="error": the step counts the non-finite rewards (the loop then raises)."""
    _, metrics = run_step({}, reward=_nan_first_group)
    assert float(metrics["reward_nonfinite"]) == 4.0
    assert "dropped_groups" not in metrics


@pytest.mark.parametrize("path", ["jax", "host"])
def test_dropped_groups_get_no_gradient(path):
    """on_failure="drop_group": the group holding a NaN reward is dropped and counted, and the update is the
    one of a run whose first group tied (zero advantages: no gradient from it; SLAS's batch std sees the
    tie's zeros either way)."""
    from engine_harness import host_brightness, run_host_step

    overrides = {"reward": {"on_failure": "drop_group"}}
    sgd = optax.sgd(1.0)
    if path == "jax":
        state, metrics = run_step(overrides, reward=_nan_first_group, tx=sgd)
    else:

        def host(images, prompts, arrays):
            scores, _ = host_brightness(images, prompts, arrays)
            scores[:4] = np.nan
            return scores, ("reward 'test' at nowhere: the first request failed",)

        state, metrics, step = run_host_step(overrides, host, tx=sgd)
        assert step.failures == ("reward 'test' at nowhere: the first request failed",)
    assert float(metrics["dropped_groups"]) == 1.0 and float(metrics["reward_nonfinite"]) == 4.0
    tied, tied_metrics = run_step({}, reward=_first_group_set_to(0.5), tx=sgd)
    assert np.abs(flat(tied.params) - flat(PARAMS)).max() > 1e-4, "the kept group still trains"
    np.testing.assert_allclose(flat(state.params), flat(tied.params), rtol=1e-4, atol=2e-6)
    kept_rewards = float(tied_metrics["reward_mean"]) * 8 - 4 * 0.5
    np.testing.assert_allclose(float(metrics["reward_mean"]), kept_rewards / 4, rtol=1e-5)


def test_advantages_from_rewards_drops_groups_with_nonfinite_rewards():
    """A dropped group's advantages are 0; group-normalised methods give the kept groups exactly what they
    would get alone; zero_std_fraction counts kept groups only."""
    from slas_jax.config import AdvantageConfig
    from slas_jax.grpo import advantages_from_rewards

    rewards = jnp.array([0.1, 0.4, jnp.nan, 0.2, 0.3, 0.3, 0.5, 0.9], jnp.float32)
    config = AdvantageConfig(method="dance_grpo")
    adv, stats = advantages_from_rewards(rewards, group_size=2, advantage=config, drop_nonfinite=True)
    alone, _ = advantages_from_rewards(rewards[jnp.array([0, 1, 4, 5, 6, 7])], group_size=2, advantage=config)
    np.testing.assert_array_equal(adv[1], [0.0, 0.0])
    np.testing.assert_allclose(adv[jnp.array([0, 2, 3])], alone, rtol=1e-6)
    assert float(stats["dropped_groups"]) == 1.0
    np.testing.assert_allclose(float(stats["zero_std_fraction"]), 1 / 3, rtol=1e-6)
