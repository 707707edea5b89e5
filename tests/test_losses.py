"""Which transitions a GRPO step trains: ``select_timesteps`` draws, per sample, a random subset of the steps
left after ``loss.exclude_first_steps`` and ``loss.exclude_last_steps``."""

import jax
import numpy as np
import pytest

from slas_jax.config import ConfigError, load_config
from slas_jax.losses import select_timesteps


@pytest.mark.parametrize(
    ("first", "last", "fraction", "k"), [(0, 0, 1.0, 8), (0, 1, 0.5, 4), (3, 1, 1.0, 4), (2, 2, 0.3, 1)]
)
def test_each_sample_trains_distinct_steps_inside_the_window(first, last, fraction, k):
    index = np.asarray(
        select_timesteps(
            jax.random.PRNGKey(0), 64, 8, fraction=fraction, exclude_first=first, exclude_last=last
        )
    )
    assert index.shape == (64, k) and index.dtype == np.int32
    assert index.min() >= first and index.max() <= 8 - last - 1
    assert all(len(set(row)) == k for row in index)
    # Every step of the window is drawn by some sample, and rows differ (a per-sample draw, not one subset).
    assert set(index.ravel()) == set(range(first, 8 - last))
    assert len({tuple(row) for row in index}) > 1


def test_excluded_steps_must_leave_a_trainable_one():
    with pytest.raises(
        ConfigError, match=r"loss\.exclude_last_steps: plus loss\.exclude_first_steps must be <"
    ):
        load_config(
            {"sampler": {"num_steps": 4}, "loss": {"exclude_first_steps": 3, "exclude_last_steps": 1}}
        )
    load_config({"sampler": {"num_steps": 4}, "loss": {"exclude_first_steps": 2, "exclude_last_steps": 1}})


def flow_policy_kl(kl_form: str) -> float:
    """The KL metric of policy_loss for two linear 'denoisers' on a Flow-GRPO SDE (noise level 0.7)."""
    import jax.numpy as jnp

    from slas_jax.losses import Transitions, policy_loss
    from slas_jax.samplers import FlowSampler, shifted_sigmas

    sampler = FlowSampler(sigmas=shifted_sigmas(8, 3.0), noise_level=0.7, form="flow_grpo")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2))
    steps = Transitions(
        latents=x,
        next_latents=x * 0.9,
        log_probs=jnp.zeros(4),
        step_index=jnp.array([0, 2, 5, 7], jnp.int32),
        advantages=jnp.ones(4),
        cond=jnp.zeros((4, 1)),
    )
    _, metrics = policy_loss(
        jnp.float32(1.0),
        jnp.float32(0.5),
        steps,
        jnp.zeros((1, 1)),
        denoise=lambda w, latents, t, cond: w * latents,
        sampler=sampler,
        guidance_scale=1.0,
        clip_range=0.2,
        kl_beta=0.1,
        kl_form=kl_form,
    )
    return float(metrics["kl"])


def test_the_flow_grpo_kl_divides_by_the_per_unit_time_variance():
    """Flow-GRPO: mean((mu - mu_ref)^2) / (2 std_dev_t^2), std_dev_t = a sqrt(sigma / (1 - sigma)), in float64
    from its formulas; the transition form divides by the whole variance std_dev_t^2 (sigma - sigma_next)."""
    from slas_jax.samplers import shifted_sigmas

    sigmas = np.asarray(shifted_sigmas(8, 3.0), np.float64)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2)), np.float64)
    index = np.array([0, 2, 5, 7])
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    dt = (sigma_next - sigma)[:, None, None, None]
    s = np.where(sigma == 1, sigmas[1], sigma)  # Flow-GRPO's guard at sigma = 1
    std_dev_t = np.sqrt(sigma / (1 - s)) * 0.7
    sd = std_dev_t[:, None, None, None]
    sg = sigma[:, None, None, None]

    def mean(v):
        return x * (1 + sd**2 / (2 * sg) * dt) + v * (1 + sd**2 * (1 - sg) / (2 * sg)) * dt

    sq = ((mean(1.0 * x) - mean(0.5 * x)) ** 2).reshape(4, -1).mean(1)
    flow_grpo = np.mean(sq / (2 * std_dev_t**2))
    transition = np.mean(sq / (2 * std_dev_t**2 * (sigma - sigma_next)))
    assert flow_policy_kl("flow_grpo") == pytest.approx(flow_grpo, rel=1e-4)
    assert flow_policy_kl("transition") == pytest.approx(transition, rel=1e-4)


def test_the_flow_grpo_kl_needs_a_flow_sampler():
    with pytest.raises(ConfigError, match=r"config\.loss\.kl_form: 'flow_grpo' divides by a flow sampler"):
        load_config({"loss": {"kl_form": "flow_grpo"}})
