"""Specification of the DDIM and flow-matching SDE steps: formulas, log-probs, re-scoring, ODE limits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slas_jax.samplers import (
    DDIMSampler,
    FlowSampler,
    dance_flow_step,
    ddim_step,
    ddim_timesteps,
    flow_sde_step,
    scaled_linear_alphas_cumprod,
    shifted_sigmas,
)
from slas_jax.samplers.flow import dynamic_shift_mu, exponential_time_shift

ALPHAS = scaled_linear_alphas_cumprod()


def assert_log_prob_close(actual, expected):
    """1e-5 relative to max(1, |expected|): averaged log-densities can cancel to near 0."""
    expected = np.asarray(expected)
    np.testing.assert_array_less(
        np.abs(np.asarray(actual) - expected), 1e-5 * np.maximum(1.0, np.abs(expected))
    )


def numpy_log_prob(x, mean, std):
    """Independent float64 Gaussian log-density, averaged over non-batch dims."""
    x, mean = np.asarray(x, np.float64), np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64).reshape(-1, *([1] * (x.ndim - 1)))
    lp = -((x - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)
    return lp.reshape(len(x), -1).mean(1)


def numpy_ddim_mean_std(eps, t, prev_t, x, eta):
    a_t, a_p = ALPHAS[t], (ALPHAS[prev_t] if prev_t >= 0 else 1.0)
    std = eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    return np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - std**2) * eps, std


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 4, 4, 2)).astype(np.float32), rng.standard_normal((3, 4, 4, 2)).astype(
        np.float32
    )


@pytest.mark.parametrize(("t", "prev_t"), [(801, 601), (401, 381), (21, 1)])
def test_ddim_log_prob_matches_numpy_float64(data, t, prev_t):
    x, eps = data
    x_prev, log_prob, mean, std = ddim_step(eps, t, prev_t, x, ALPHAS, eta=1.0, key=jax.random.key(0))
    ref_mean, ref_std = numpy_ddim_mean_std(eps.astype(np.float64), t, prev_t, x.astype(np.float64), 1.0)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, ref_std, rtol=1e-5)
    ref = numpy_log_prob(x_prev, ref_mean, np.full(3, ref_std))
    assert_log_prob_close(log_prob, ref)
    assert log_prob.dtype == jnp.float32


def test_ddim_rescoring_reproduces_log_prob(data):
    x, eps = data
    drawn, lp, _, _ = ddim_step(eps, 501, 481, x, ALPHAS, eta=1.0, key=jax.random.key(3))
    again, lp2, _, _ = ddim_step(eps, 501, 481, x, ALPHAS, eta=1.0, prev_sample=drawn)
    np.testing.assert_array_equal(again, drawn)
    np.testing.assert_allclose(lp2, lp, rtol=1e-6)


def test_ddim_eta_zero_is_deterministic_ddim(data):
    x, eps = data
    out, log_prob, _, std = ddim_step(eps, 601, 401, x, ALPHAS, eta=0.0, key=jax.random.key(0))
    a_t, a_p = ALPHAS[601], ALPHAS[401]
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    np.testing.assert_allclose(out, np.sqrt(a_p) * x0 + np.sqrt(1 - a_p) * eps, rtol=1e-5, atol=1e-5)
    assert float(std) == 0.0 and np.all(np.asarray(log_prob) == 0.0)


def test_ddim_final_step_uses_final_alpha(data):
    x, eps = data
    out, _, _, std = ddim_step(eps, 1, -19, x, ALPHAS, eta=1.0, key=jax.random.key(0))
    a_t = ALPHAS[1]
    np.testing.assert_allclose(out, (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), rtol=1e-5, atol=1e-5)
    assert float(std) == 0.0


def test_ddim_per_sample_timesteps(data):
    x, eps = data
    t, prev = jnp.array([801, 401, 201]), jnp.array([781, 381, 181])
    out, lp, mean, _ = ddim_step(eps, t, prev, x, ALPHAS, eta=1.0, key=jax.random.key(1))
    for b in range(3):
        ref_mean, ref_std = numpy_ddim_mean_std(eps[b : b + 1], int(t[b]), int(prev[b]), x[b : b + 1], 1.0)
        np.testing.assert_allclose(mean[b : b + 1], ref_mean, rtol=1e-5, atol=1e-5)
        assert_log_prob_close(lp[b], numpy_log_prob(out[b : b + 1], ref_mean, [ref_std])[0])


def test_ddim_drawn_noise_has_the_stated_std():
    x = jnp.zeros((1, 64, 64, 4))
    out, _, mean, std = ddim_step(jnp.zeros_like(x), 501, 481, x, ALPHAS, eta=1.0, key=jax.random.key(0))
    assert abs(float(jnp.std(out - mean)) / float(std) - 1.0) < 0.02


def test_ddim_timesteps_match_diffusers_leading_spacing():
    t, prev = ddim_timesteps(50, 1000, steps_offset=1)
    assert t[0] == 981 and t[-1] == 1 and prev[0] == 961 and prev[-1] == -19 and len(t) == 50


def numpy_flow_mean_std(v, sigma, sigma_next, x, a):
    dt = sigma_next - sigma
    std_t = a * np.sqrt(sigma / (1 - (sigma_next if sigma == 1 else sigma)))
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_t * np.sqrt(-dt)


@pytest.mark.parametrize(("sigma", "sigma_next"), [(1.0, 0.9), (0.7, 0.55), (0.2, 0.0)])
def test_flow_sde_log_prob_matches_numpy_float64(data, sigma, sigma_next):
    x, v = data
    out, lp, mean, _ = flow_sde_step(v, sigma, sigma_next, x, noise_level=0.7, key=jax.random.key(0))
    ref_mean, ref_std = numpy_flow_mean_std(
        v.astype(np.float64), sigma, sigma_next, x.astype(np.float64), 0.7
    )
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    assert_log_prob_close(lp, numpy_log_prob(out, ref_mean, np.full(3, ref_std)))


def test_dance_flow_log_prob_matches_numpy_float64(data):
    x, v = data
    sigma, sigma_next, eta = 0.8, 0.6, 0.3
    out, lp, mean, _ = dance_flow_step(v, sigma, sigma_next, x, eta=eta, key=jax.random.key(0))
    x64, v64 = x.astype(np.float64), v.astype(np.float64)
    x0 = x64 - sigma * v64
    score = -(x64 - x0 * (1 - sigma)) / sigma**2
    ref_mean = x64 + (sigma_next - sigma) * v64 - 0.5 * eta**2 * score * (sigma_next - sigma)
    ref_std = eta * np.sqrt(sigma - sigma_next)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    assert_log_prob_close(lp, numpy_log_prob(out, ref_mean, np.full(3, ref_std)))


@pytest.mark.parametrize("step", ["flow_grpo", "dance"])
def test_zero_noise_is_euler_ode_step(data, step):
    x, v = data
    if step == "flow_grpo":
        out, *_ = flow_sde_step(v, 0.6, 0.4, x, noise_level=0.0, key=jax.random.key(0))
    else:
        out, *_ = dance_flow_step(v, 0.6, 0.4, x, eta=0.0, key=jax.random.key(0))
    np.testing.assert_allclose(out, x - 0.2 * v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["flow_grpo", "dance"])
def test_flow_rescoring_reproduces_log_prob(data, form):
    x, v = data
    sampler = FlowSampler(sigmas=shifted_sigmas(8, 3.0), noise_level=0.5, form=form)
    drawn, lp, _, _ = sampler.step(v, jnp.array([0, 3, 7]), x, key=jax.random.key(2))
    _, lp2, _, _ = sampler.step(v, jnp.array([0, 3, 7]), x, prev_sample=drawn)
    np.testing.assert_allclose(lp2, lp, rtol=1e-6)


def test_v_prediction_converts_to_eps(data):
    x, eps = data
    t = 501
    a = ALPHAS[t]
    x0 = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    ts, prev = np.array([t]), np.array([481])
    eps_model = DDIMSampler(alphas_cumprod=ALPHAS, timesteps=ts, prev_timesteps=prev, eta=0.0)
    v_model = DDIMSampler(
        alphas_cumprod=ALPHAS, timesteps=ts, prev_timesteps=prev, eta=0.0, prediction_type="v_prediction"
    )
    out_eps, *_ = eps_model.step(eps, 0, x_t, key=jax.random.key(0))
    out_v, *_ = v_model.step(v, 0, x_t, key=jax.random.key(0))
    np.testing.assert_allclose(out_v, out_eps, rtol=1e-4, atol=1e-4)


def test_shifted_schedule_endpoints_and_monotone():
    s = shifted_sigmas(16, 3.0)
    assert s[0] == 1.0 and s[-1] == 0.0 and np.all(np.diff(s) < 0)
    assert s[8] == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    mu = dynamic_shift_mu(4096)
    assert mu == pytest.approx(1.15)
    e = exponential_time_shift(np.linspace(1, 0, 5), mu)
    assert e[0] == pytest.approx(1.0) and e[-1] == 0.0 and np.all(np.diff(e) < 0)


def test_predict_x0_recovers_the_clean_sample():
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    sigma = 0.6
    flow = FlowSampler(sigmas=np.array([1.0, sigma, 0.0]), noise_level=0.7)
    np.testing.assert_allclose(
        flow.predict_x0(noise - x0, 1, (1 - sigma) * x0 + sigma * noise), x0, atol=1e-5
    )
    ts, prev = ddim_timesteps(10, 1000, steps_offset=1)
    ddim = DDIMSampler(alphas_cumprod=ALPHAS, timesteps=ts, prev_timesteps=prev, eta=1.0)
    a = ALPHAS[ts[3]]
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    np.testing.assert_allclose(ddim.predict_x0(noise, 3, x_t), x0, atol=1e-4)


@pytest.mark.parametrize("kind", ["flow", "ddim"])
def test_an_sde_window_draws_noise_only_inside_it(kind):
    """Flow-GRPO-Fast / MixGRPO: steps outside [start, end) take the deterministic step with log_prob 0;
    steps inside are the unwindowed sampler's. Per-sample step indices 2, 3, 4, 5 with window (3, 5)."""
    rng = np.random.default_rng(3)
    x, pred = (rng.standard_normal((4, 4, 4, 2)).astype(np.float32) for _ in range(2))
    if kind == "flow":
        full = FlowSampler(sigmas=shifted_sigmas(8, 3.0), noise_level=0.7)
        ode = dataclasses.replace(full, noise_level=0.0)
    else:
        ts, prev = ddim_timesteps(8, 1000, steps_offset=1)
        full = DDIMSampler(alphas_cumprod=ALPHAS, timesteps=ts, prev_timesteps=prev, eta=1.0)
        ode = dataclasses.replace(full, eta=0.0)
    windowed = dataclasses.replace(full, sde_window=(3, 5))
    index = jnp.array([2, 3, 4, 5])
    inside, outside = [1, 2], [0, 3]

    drawn, log_prob, _, std = map(np.asarray, windowed.step(pred, index, x, key=jax.random.key(0)))
    redrawn = np.asarray(windowed.step(pred, index, x, key=jax.random.key(1))[0])
    reference, reference_lp = map(np.asarray, full.step(pred, index, x, key=jax.random.key(0))[:2])
    deterministic = np.asarray(ode.step(pred, index, x, key=jax.random.key(2))[0])

    assert np.all(std[outside] == 0) and np.all(std[inside] > 0)
    np.testing.assert_allclose(drawn[outside], deterministic[outside], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(drawn[outside], redrawn[outside])
    np.testing.assert_array_equal(log_prob[outside], 0.0)
    np.testing.assert_allclose(drawn[inside], reference[inside], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_prob[inside], reference_lp[inside], rtol=1e-6)
    assert not np.allclose(drawn[inside], redrawn[inside])
