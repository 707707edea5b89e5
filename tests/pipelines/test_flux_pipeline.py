"""The FLUX pipeline against diffusers' FluxPipeline on a tiny random diffusers-format folder, stage by stage
(tokenizers, CLIP + T5 encoders, sigma schedule, transformer velocity, SDE steps, VAE decode) and end to end;
two GRPO steps of ``train.run`` on that folder; the random pixel-space testbed pipeline's first-update ratio;
and the one-line error of the FLUX.1-dev recipe without weights."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from cli_runner import one_line_error, run_module
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift, retrieve_timesteps
from engine_harness import record_trained_state
from tiny_checkpoints import save_tiny_flux
from tiny_models import PIXEL_FLUX

from slas_jax import grpo
from slas_jax.config import ConfigError, DataConfig, load_config
from slas_jax.data import build_prompt_source
from slas_jax.models import flux
from slas_jax.pipelines.flux import T5_MAX_LENGTH, flow_sampler, load_flux_pipeline, random_flux_pipeline
from slas_jax.rewards import build_reward
from slas_jax.samplers.flow import dance_flow_step, flow_sde_step
from slas_jax.train import run

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red cat on the mat", "bright top", ""]
RESOLUTION = 32  # 8x VAE -> 4 x 4 x 16 latents -> 2 x 2 packed tokens of width 64
SEQ_LEN = (RESOLUTION // 16) ** 2
NUM_STEPS = 4
NOISE_LEVEL = 0.7
FLUX_GUIDANCE = 3.5


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[FluxPipeline, Path]:
    """A tiny random FluxPipeline (FLUX.1-dev's structure: guidance-embedded transformer, 16-channel 8x VAE
    with FLUX's latent scaling, CLIP-L-style pooling, dynamic-shift scheduler), every weight perturbed so
    that no parameter sits at its default (tiny_checkpoints.save_tiny_flux), and the folder it was saved to."""
    folder = tmp_path_factory.mktemp("flux") / "FLUX.1-tiny"
    return save_tiny_flux(folder, resolution=RESOLUTION), folder


def flux_config(folder: Path | None, **sections: dict) -> dict:
    """A config mapping for the FLUX family; ``sections`` update the defaults below section by section."""
    values = {
        "model": {
            "family": "flux",
            "checkpoint": None if folder is None else str(folder),
            "resolution": RESOLUTION,
        },
        "sampler": {
            "name": "flow_sde",
            "num_steps": NUM_STEPS,
            "noise_level": NOISE_LEVEL,
            "schedule": "dynamic",
            "flux_guidance": FLUX_GUIDANCE,
        },
        "train": {"prompts_per_step": 2, "group_size": 2, "micro_batch_size": 2},
    }
    for name, section in sections.items():
        values[name] = {**values.get(name, {}), **section}
    return values


def max_error(got, want, scale: float = 1e-4) -> tuple[float, float]:
    """(max abs difference, tolerance ``scale`` x max(1, max |want|))."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max()), scale * max(1.0, float(np.abs(want).max()))


def assert_close(what: str, got, want, scale: float = 1e-4) -> None:
    assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != {np.shape(want)}"
    err, tol = max_error(got, want, scale)
    print(f"flux pipeline parity, {what}: max abs error {err:.3g} (tolerance {tol:.3g})")
    assert err < tol, f"{what}: max abs error {err:.3g} >= {tol:.3g}"


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def pack(x) -> torch.Tensor:
    """NHWC latents -> FluxPipeline's packed (b, h/2 * w/2, 4c) tokens, by the pipeline's own function."""
    b, h, w, c = np.shape(x)
    return FluxPipeline._pack_latents(nchw(x), b, c, h, w)


def unpack(tokens: torch.Tensor) -> np.ndarray:
    """FluxPipeline's packed tokens -> NHWC numpy latents, by the pipeline's own function."""
    latents = FluxPipeline._unpack_latents(tokens, RESOLUTION, RESOLUTION, vae_scale_factor=8)
    return latents.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------------------------
# Independent float64 step formulas (written from Flow-GRPO's sde_step_with_logprob and DanceGRPO's flux_step).


def gaussian_log_prob64(sample: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
    """Per-sample mean over elements of log N(sample; mean, std^2)."""
    log_density = -((sample - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)
    return log_density.reshape(len(sample), -1).mean(axis=1)


def flow_grpo_step64(v, x, sigmas, i, a):
    """(mean, std): Flow-GRPO's SDE with noise level a; at sigma == 1 the std's denominator uses sigmas[1]."""
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    dt = sigma_next - sigma
    std_t = a * np.sqrt(sigma / (1 - (float(sigmas[1]) if sigma == 1 else sigma)))
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_t * np.sqrt(-dt)


def dance_step64(v, x, sigmas, i, eta):
    """(mean, std): DanceGRPO's FLUX step (sde_solver=True) with eta."""
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    dsigma = sigma_next - sigma
    x0 = x - sigma * v
    score = -(x - x0 * (1 - sigma)) / sigma**2
    mean = x + dsigma * v + (-0.5 * eta**2 * score) * dsigma
    return mean, eta * np.sqrt(sigma - sigma_next)


STEPS64 = {"flow_sde": flow_grpo_step64, "dance_flow": dance_step64}


# ------------------------------------------------------------------------------------------------------------
# Parity, stage by stage.


@pytest.fixture(scope="module")
def ours(reference):
    """Our pipeline loaded from the reference folder (flow_sde sampler, FLUX's dynamic schedule)."""
    _, folder = reference
    return load_flux_pipeline(load_config(flux_config(folder)))


@pytest.fixture(scope="module")
def jitted(ours) -> SimpleNamespace:
    """The pipeline's encode / denoise / decode, each jitted once for the whole module (compiles dominate)."""
    p = ours.pipeline
    return SimpleNamespace(encode=jax.jit(p.encode), denoise=jax.jit(p.denoise), decode=jax.jit(p.decode))


def set_flux_timesteps(pipe: FluxPipeline) -> np.ndarray:
    """FluxPipeline's set_timesteps call for NUM_STEPS steps at RESOLUTION (linear sigmas from 1 to 1 / N,
    mu from the packed sequence length); returns the scheduler's sigmas (NUM_STEPS + 1,) float32."""
    mu = calculate_shift(
        SEQ_LEN,
        pipe.scheduler.config.get("base_image_seq_len", 256),
        pipe.scheduler.config.get("max_image_seq_len", 4096),
        pipe.scheduler.config.get("base_shift", 0.5),
        pipe.scheduler.config.get("max_shift", 1.15),
    )
    sigmas = np.linspace(1.0, 1 / NUM_STEPS, NUM_STEPS)
    retrieve_timesteps(pipe.scheduler, NUM_STEPS, "cpu", sigmas=sigmas, mu=mu)
    return pipe.scheduler.sigmas.numpy()


@pytest.fixture(scope="module")
def scheduler_sigmas(reference) -> np.ndarray:
    return set_flux_timesteps(reference[0])


@pytest.fixture(scope="module")
def inputs(reference, ours) -> dict:
    """Shared inputs: latents x (3, 4, 4, 16) float32, standard-normal noise z of that shape (float64), and
    the pipeline's conditioning from encode_prompt (T5 features, pooled CLIP, text ids)."""
    pipe, _ = reference
    rng = np.random.default_rng(0)
    n = len(PROMPTS)
    with torch.no_grad():
        features, pooled, text_ids = pipe.encode_prompt(PROMPTS, PROMPTS, max_sequence_length=T5_MAX_LENGTH)
    return {
        "x": rng.standard_normal((n, *ours.pipeline.latent_shape)).astype(np.float32),
        "z": rng.standard_normal((n, *ours.pipeline.latent_shape)),
        "features": features,
        "pooled": pooled,
        "text_ids": text_ids,
    }


def reference_velocity(pipe: FluxPipeline, x: np.ndarray, sigma: float, inputs: dict) -> torch.Tensor:
    """The transformer call of FluxPipeline's denoising loop at sigma (timestep = 1000 sigma, passed / 1000)."""
    n = len(x)
    timestep = torch.full((n,), float(np.float32(sigma) * 1000), dtype=torch.float32)
    with torch.no_grad():
        return pipe.transformer(
            hidden_states=pack(x),
            timestep=timestep / 1000,
            guidance=torch.full((n,), FLUX_GUIDANCE),
            pooled_projections=inputs["pooled"],
            encoder_hidden_states=inputs["features"],
            txt_ids=inputs["text_ids"],
            img_ids=FluxPipeline._prepare_latent_image_ids(n, 2, 2, "cpu", torch.float32),
            return_dict=False,
        )[0]


def test_tokenization_matches_the_pipeline_tokenizers(reference, ours):
    """Our tokens are CLIP's 77 ids then T5's 512, as FluxPipeline's _get_clip/_get_t5_prompt_embeds make them."""
    pipe, _ = reference
    clip_ids = pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True
    ).input_ids
    t5_ids = pipe.tokenizer_2(
        PROMPTS, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True
    ).input_ids
    tokens = ours.tokenize(PROMPTS)
    assert tokens.shape == (len(PROMPTS), 77 + T5_MAX_LENGTH) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, np.concatenate([clip_ids, t5_ids], axis=1))
    assert len(set(tokens[0, :8])) == 8  # start, six whole words (none unknown: that is end-of-text), end
    np.testing.assert_array_equal(np.asarray(ours.frozen["uncond_tokens"]), tokens[2:])  # negative prompt ""


def test_text_encoders_match_the_pipeline(ours, jitted, inputs):
    (features, pooled), _ = jitted.encode(ours.frozen, {"tokens": ours.tokenize(PROMPTS)})
    assert_close("CLIP pooled output", pooled, inputs["pooled"].numpy())
    assert_close("T5 features", features, inputs["features"].numpy())


def test_dynamic_schedule_matches_the_scheduler(ours, scheduler_sigmas):
    sampler = ours.pipeline.sampler
    assert sampler.num_steps == NUM_STEPS
    assert_close("dynamic sigma schedule", sampler.sigmas, scheduler_sigmas, scale=1e-6)
    # FLUX's mu is positive at any size: the shift moves every intermediate sigma towards noise.
    assert scheduler_sigmas[0] == 1.0 and scheduler_sigmas[1] > 1 - 1 / NUM_STEPS
    model_time = np.asarray(jax.vmap(sampler.model_time)(jnp.arange(NUM_STEPS)))
    np.testing.assert_allclose(model_time, scheduler_sigmas[:-1], rtol=1e-6)


@pytest.mark.parametrize("step", [0, 2])
def test_velocity_matches_the_transformer_on_packed_latents(
    reference, ours, jitted, inputs, scheduler_sigmas, step
):
    pipe, _ = reference
    sigma = scheduler_sigmas[step]
    want = reference_velocity(pipe, inputs["x"], sigma, inputs).numpy()
    cond = (jnp.asarray(inputs["features"].numpy()), jnp.asarray(inputs["pooled"].numpy()))
    t = jnp.full((len(PROMPTS),), ours.pipeline.sampler.model_time(step))
    got = jitted.denoise(ours.params, jnp.asarray(inputs["x"]), t, cond)
    assert got.shape == inputs["x"].shape  # unpacked NHWC, like the sampler's latents
    assert_close(f"transformer velocity at step {step}", flux.pack_latents(got), want)


@pytest.fixture(scope="module")
def velocities(reference, inputs, scheduler_sigmas) -> list[torch.Tensor]:
    """The pipeline transformer's packed velocity at the shared latents, at every step's sigma."""
    return [reference_velocity(reference[0], inputs["x"], s, inputs) for s in scheduler_sigmas[:-1]]


@pytest.mark.parametrize("name", ["flow_sde", "dance_flow"])
def test_sde_steps_match_float64_formulas(reference, inputs, scheduler_sigmas, velocities, name):
    """Each step of the configured sampler, fed the pipeline transformer's velocity, against the float64
    formulas on packed latents: mean, std, the sample drawn with the same noise, and its log-prob."""
    _, folder = reference
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    sampler = flow_sampler(
        load_config(flux_config(folder, sampler={"name": name})), SEQ_LEN, scheduler_config
    )
    sigmas64 = scheduler_sigmas.astype(np.float64)
    x = jnp.asarray(inputs["x"])
    for i, v in enumerate(velocities):
        mean64, std64 = STEPS64[name](np.float64(v), np.float64(pack(inputs["x"])), sigmas64, i, NOISE_LEVEL)
        sample64 = mean64 + std64 * np.float64(pack(inputs["z"]))
        stored = unpack(torch.from_numpy(sample64.astype(np.float32)))
        _, log_prob, mean, std = sampler.step(jnp.asarray(unpack(v)), i, x, prev_sample=stored)
        assert_close(f"{name} mean, step {i}", flux.pack_latents(mean), mean64, scale=1e-6)
        assert_close(f"{name} std, step {i}", std, std64, scale=1e-6)
        sample = flux.pack_latents(mean + std * jnp.asarray(inputs["z"], jnp.float32))
        assert_close(f"{name} sample, step {i}", sample, sample64, scale=1e-6)
        want = gaussian_log_prob64(np.float64(pack(stored)), mean64, std64)
        assert_close(f"{name} log-prob, step {i}", log_prob, want)


@pytest.mark.parametrize("step_fn", [flow_sde_step, dance_flow_step])
def test_noise_free_step_is_the_scheduler_euler_step(reference, inputs, velocities, step_fn):
    """With noise level 0 both SDE steps are FlowMatchEulerDiscreteScheduler.step."""
    pipe, _ = reference
    level = {"noise_level": 0.0} if step_fn is flow_sde_step else {"eta": 0.0}
    for i, v in enumerate(velocities):
        sigmas = set_flux_timesteps(pipe)  # a fresh schedule, stepped from index i
        pipe.scheduler.set_begin_index(i)
        want = pipe.scheduler.step(v, pipe.scheduler.timesteps[i], pack(inputs["x"]), return_dict=False)[0]
        got, log_prob, _, std = step_fn(
            jnp.asarray(unpack(v)),
            sigmas[i],
            sigmas[i + 1],
            jnp.asarray(inputs["x"]),
            key=jax.random.PRNGKey(i),
            **level,
        )
        assert float(std) == 0.0 and not np.any(np.asarray(log_prob))
        assert_close(f"{step_fn.__name__} without noise = Euler, step {i}", got, unpack(want), scale=1e-6)


def test_vae_decode_matches_the_pipeline(reference, ours, jitted, inputs):
    pipe, _ = reference
    latents = inputs["z"].astype(np.float32)
    config = pipe.vae.config
    with torch.no_grad():
        raw = pipe.vae.decode(nchw(latents) / config.scaling_factor + config.shift_factor).sample
        want = pipe.image_processor.postprocess(raw, output_type="pt").permute(0, 2, 3, 1).numpy()
    got = jitted.decode(ours.frozen, jnp.asarray(latents))
    assert got.shape == (len(PROMPTS), RESOLUTION, RESOLUTION, 3)
    unclipped = float(np.mean((want > 0) & (want < 1)))
    assert unclipped > 0.5, f"only {unclipped:.0%} of the pixels are inside (0, 1): the comparison is void"
    assert_close("VAE decode (images in [0, 1])", got, want)


def test_one_full_step_matches_the_pipeline(reference, ours, jitted, inputs, scheduler_sigmas):
    """prompt -> tokens -> CLIP pooled + T5 -> velocity -> Flow-GRPO SDE step with the same noise -> VAE
    decode: our chain against FluxPipeline's components with the float64 step, from step 1."""
    pipe, _ = reference
    i, x, z = 1, inputs["x"], inputs["z"]
    cond, _ = jitted.encode(ours.frozen, {"tokens": ours.tokenize(PROMPTS)})
    t = jnp.full((len(x),), ours.pipeline.sampler.model_time(i))
    v = jitted.denoise(ours.params, jnp.asarray(x), t, cond)
    _, _, mean, std = ours.pipeline.sampler.step(v, i, jnp.asarray(x), prev_sample=jnp.asarray(x))
    got = jitted.decode(ours.frozen, mean + std * jnp.asarray(z, jnp.float32))

    v_ref = unpack(reference_velocity(pipe, x, scheduler_sigmas[i], inputs))
    sigmas64 = scheduler_sigmas.astype(np.float64)
    mean64, std64 = flow_grpo_step64(np.float64(v_ref), np.float64(x), sigmas64, i, NOISE_LEVEL)
    config = pipe.vae.config
    with torch.no_grad():
        latents = nchw(mean64 + std64 * z) / config.scaling_factor + config.shift_factor
        want = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pt")
    assert_close("one full step (prompt to image)", got, want.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize(
    ("scheduler_config", "expected"),
    [
        ({"use_dynamic_shifting": False, "shift": 3.0}, "set sampler.schedule='shift' and sampler.shift=3.0"),
        ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, "time_shift_type='linear'"),
        ({"use_dynamic_shifting": True, "shift_terminal": 0.1}, "shift_terminal=0.1"),
    ],
)
def test_dynamic_schedule_refuses_schedulers_it_does_not_reproduce(scheduler_config, expected):
    config = load_config(flux_config(None))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        flow_sampler(config, SEQ_LEN, scheduler_config)


def test_resolution_must_tile_into_packed_latents(reference):
    _, folder = reference
    with pytest.raises(ConfigError, match=r"config\.model\.resolution: must be a multiple of 16 .* got 40"):
        load_flux_pipeline(load_config(flux_config(folder, model={"resolution": 40})))


# ------------------------------------------------------------------------------------------------------------
# Training.


def test_two_grpo_steps_on_the_diffusers_folder(reference, ours, tmp_path, monkeypatch):
    """train.run on the converted folder: DanceGRPO's sampler and shifted schedule, brightness reward."""
    _, folder = reference
    trained = record_trained_state(monkeypatch)
    values = flux_config(
        folder,
        sampler={"name": "dance_flow", "num_steps": 3, "noise_level": 0.3, "schedule": "shift", "shift": 3.0},
        loss={"timestep_fraction": 0.5, "exclude_last_steps": 1},
        train={"num_steps": 2, "output_dir": str(tmp_path)},
        optim={"learning_rate": 1e-3},
        reward={"name": "brightness"},
        data={"name": "brightness"},
    )
    history = run(load_config(values))
    assert len(history) == 2
    for record in history:
        assert all(np.isfinite(v) for v in record.values()), record
        assert record["first_ratio_max_dev"] < 1e-5, record
        assert record["grad_norm"] > 0, record
    # Two updates per step: the second re-scores its transitions under the transformer the first changed.
    assert history[0]["ratio_max_dev"] > 1e-3 > history[0]["first_ratio_max_dev"]
    state = trained["state"]
    assert int(state.step) == 2
    deltas = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), state.params, ours.params))
    assert all(np.isfinite(d) for d in deltas) and max(float(d) for d in deltas) > 1e-4


def test_random_pixel_space_pipeline_first_update_has_ratio_one():
    """The CPU testbeds' FLUX: random transformer on 2x2 pixel patches + one tiny CLIP text encoder."""
    values = flux_config(
        None,
        model=PIXEL_FLUX,
        sampler={"schedule": "shift", "shift": 3.0, "num_steps": 3},
        loss={"timestep_fraction": 0.5},
    )
    config = load_config(values)
    prompts = build_prompt_source(config.data)
    bundle = random_flux_pipeline(config, prompts.vocabulary, max_length=8)
    assert bundle.pipeline.latent_shape == (8, 8, 3)
    reward = build_reward("brightness", {})
    tx = grpo.make_optimizer(config)
    state = grpo.init_train_state(bundle.params, bundle.frozen, tx, config)
    step = jax.jit(
        grpo.make_train_step(bundle.pipeline, lambda f, images, b: reward.fn(None, images, b), tx, config)
    )
    texts, arrays = prompts.batch(0, config.train.prompts_per_step)
    new_state, metrics = step(state, {"tokens": bundle.tokenize(texts), **arrays}, jax.random.PRNGKey(0))
    assert float(metrics["first_ratio_max_dev"]) < 1e-5
    assert np.isfinite(float(metrics["policy_loss"])) and float(metrics["grad_norm"]) > 0
    assert int(new_state.step) == 1


# ------------------------------------------------------------------------------------------------------------
# The FLUX.1-dev recipe.


def test_flux_recipe_without_weights_fails_with_one_line(tmp_path):
    """The recipe as published, with a prompt file but no FLUX.1-dev folder: exit code 2 and one line naming
    the folder and where FLUX.1-dev is published."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n")
    # The prompt set is stored (under ~/tensorflow_datasets, HOME being tmp_path below) on first use, with
    # TFDS progress output on stderr; store it here so that the run's stderr holds the error alone.
    build_prompt_source(
        DataConfig(
            name="text_file",
            options={"path": str(prompts), "data_dir": str(tmp_path / "tensorflow_datasets")},
        )
    )
    out = run_module(
        "slas_jax.train",
        "--config",
        ROOT / "configs" / "flux_tpu.py",
        f"--config.data.options.path={prompts}",
        f"--config.train.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,  # so the default checkpoints/FLUX.1-dev surely does not exist
        env={"HOME": str(tmp_path)},  # the prompt set is stored under ~/tensorflow_datasets
    )
    line = one_line_error(out)
    assert "checkpoints/FLUX.1-dev" in line and "black-forest-labs/FLUX.1-dev" in line
    # The reward's weights are missing too, and the same line says so.
    assert "and the reward: HPS-v2.1 folder checkpoints/hps_v2.1 does not exist" in line, line
    assert "HPS_v2.1_compressed.pt of xswu/HPSv2" in line, line
    assert "Traceback" not in out.stderr
