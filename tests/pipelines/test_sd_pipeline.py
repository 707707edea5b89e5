"""The Stable Diffusion pipeline against diffusers' StableDiffusionPipeline on a tiny random folder written by
save_pretrained: tokens, text embeddings, the CFG noise prediction, DDIMScheduler steps with eta and the same
variance noise, VAE decode, and one full step end to end; two GRPO steps of ``train.run`` from the diffusers
folder and from its converted copy (SD1.4 recipe: text_file prompts, PickScore-style reward, CFG); the
recipe's one-line error without weights; and generation from a converted folder without torch."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from cli_runner import one_line_error, run_module
from engine_harness import flat
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from tiny_checkpoints import save_tiny_clip_model, save_tiny_sd

from slas_jax import grpo
from slas_jax.checkpoint import Checkpointer
from slas_jax.config import load_config
from slas_jax.convert import convert_pipeline
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.pipelines.sd import load_sd_pipeline, scheduler_sampler
from slas_jax.rollout import guided_prediction
from slas_jax.train import run
from slas_jax.weights import export_policy, load_policy, stored_groups

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red cat on the mat", "a dog in the fog"]
RESOLUTION = 16  # VAE x2 -> 8 x 8 x 4 latents
NUM_STEPS = 4
GUIDANCE = 3.0
ETA = 1.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[diffusers.StableDiffusionPipeline, Path]:
    """A tiny random StableDiffusionPipeline with SD1.4's structure (CrossAttn down / up blocks, 4-channel VAE
    with SD's scaling factor, OpenAI-style CLIP text encoder, DDIM with SD1.4's scheduler settings, every
    weight perturbed: tiny_checkpoints.save_tiny_sd), saved by save_pretrained; and the folder."""
    folder = tmp_path_factory.mktemp("sd") / "sd-tiny"
    return save_tiny_sd(folder, resolution=RESOLUTION), folder


def sd_config(folder: Path | str | None, **sections: dict) -> dict:
    """A config mapping for the tiny SD folder; ``sections`` update the defaults section by section."""
    values = {
        "model": {
            "family": "unet",
            "checkpoint": None if folder is None else str(folder),
            "resolution": RESOLUTION,
        },
        "sampler": {"name": "ddim", "num_steps": NUM_STEPS, "noise_level": ETA, "guidance_scale": GUIDANCE},
        "train": {"prompts_per_step": 2, "group_size": 2, "micro_batch_size": 4},
    }
    for name, section in sections.items():
        values[name] = {**values.get(name, {}), **section}
    return values


@pytest.fixture(scope="module")
def ours(reference):
    return load_sd_pipeline(load_config(sd_config(reference[1])))


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "sd-tiny-jax"
    convert_pipeline(reference[1], out, log=lambda _: None)
    return out


def assert_close(what: str, got, want, scale: float = 1e-4) -> None:
    """max |got - want| < scale x max(1, max |want|); the error is printed for the record."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err, tol = float(np.abs(got - want).max()), scale * max(1.0, float(np.abs(want).max()))
    print(f"sd pipeline parity, {what}: max abs error {err:.3g} (tolerance {tol:.3g})")
    assert err < tol, f"{what}: max abs error {err:.3g} >= {tol:.3g}"


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def test_tokens_and_text_embeddings_match_the_pipeline(reference, ours):
    pipe, _ = reference
    want = pipe.tokenizer([*PROMPTS, ""], padding="max_length", max_length=77, truncation=True).input_ids
    tokens = ours.tokenize(PROMPTS)
    assert tokens.shape == (len(PROMPTS), 77) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, np.asarray(want[:-1]))
    np.testing.assert_array_equal(np.asarray(ours.frozen["uncond_tokens"]), np.asarray(want[-1:]))
    assert len(set(tokens[0, :7])) == 7  # whole words, not unknowns
    with torch.no_grad():
        cond_want, uncond_want = pipe.encode_prompt(
            PROMPTS, "cpu", 1, True, negative_prompt=[""] * len(PROMPTS)
        )
    cond, uncond = jax.jit(ours.pipeline.encode)(ours.frozen, {"tokens": tokens})
    assert_close("text embeddings", cond, cond_want.numpy())
    assert_close("empty-prompt embeddings", uncond[0], uncond_want[0].numpy())


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_steps_match_the_scheduler(reference, set_alpha_to_one):
    """Every step of our DDIMSampler against DDIMScheduler.step(eta, variance_noise=z): same timesteps, the same
    sample from the same noise, the scheduler's std, and the log-density of its sample in float64."""
    pipe, folder = reference
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=set_alpha_to_one)
    scheduler.set_timesteps(NUM_STEPS)
    sampler = scheduler_sampler(dict(scheduler.config), load_config(sd_config(folder)))
    np.testing.assert_array_equal(sampler.timesteps, scheduler.timesteps.numpy())
    rng = np.random.default_rng(1)
    shape = (2, RESOLUTION // 2, RESOLUTION // 2, 4)
    x, eps, z = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    for i, t in enumerate(scheduler.timesteps):
        step = scheduler.step(nchw(eps), t, nchw(x), eta=ETA, variance_noise=nchw(z)).prev_sample
        mean_want = scheduler.step(nchw(eps), t, nchw(x), eta=ETA, variance_noise=torch.zeros(nchw(z).shape))
        prev_t = int(t) - scheduler.config.num_train_timesteps // NUM_STEPS
        std_want = ETA * float(scheduler._get_variance(t, torch.tensor(prev_t))) ** 0.5
        want = nhwc(step)
        _, log_prob, mean, std = sampler.step(
            jnp.asarray(eps), i, jnp.asarray(x), prev_sample=jnp.asarray(want)
        )
        assert_close(f"DDIM sample, step {i}", mean + std * z, want)
        assert_close(f"DDIM mean, step {i}", mean, nhwc(mean_want.prev_sample))
        assert_close(f"DDIM std, step {i}", std, std_want, scale=1e-6)
        if std_want == 0:  # set_alpha_to_one: the last step lands on x0, deterministically (log-prob 0 here)
            assert i == NUM_STEPS - 1 and set_alpha_to_one and not np.any(np.asarray(log_prob))
            continue
        mean64 = nhwc(mean_want.prev_sample).astype(np.float64)
        density = -((want - mean64) ** 2) / (2 * std_want**2) - np.log(std_want) - 0.5 * np.log(2 * np.pi)
        assert_close(f"DDIM log-prob, step {i}", log_prob, density.reshape(2, -1).mean(axis=1))
    # The last step lands on alphas_cumprod[0] or on 1, as set_alpha_to_one says.
    assert sampler.final_alpha_cumprod == pytest.approx(float(scheduler.final_alpha_cumprod), rel=1e-6)


def test_scheduler_settings_this_ddim_does_not_implement_are_refused(reference):
    pipe, folder = reference
    config = load_config(sd_config(folder))
    for key, value in (("clip_sample", True), ("thresholding", True), ("timestep_spacing", "trailing")):
        with pytest.raises(ConversionError, match=re.escape(f"{key}={value!r} is not supported")):
            scheduler_sampler({**pipe.scheduler.config, key: value}, config)


def test_one_ddim_step_with_cfg_matches_the_pipeline(reference, ours):
    """prompt + empty negative prompt -> CFG noise prediction -> DDIMScheduler step with eta and the same
    variance noise -> VAE decode, our jitted pieces against the pipeline's components at step 1."""
    pipe, _ = reference
    i, scale = 1, GUIDANCE
    rng = np.random.default_rng(2)
    shape = (len(PROMPTS), *ours.pipeline.latent_shape)
    assert ours.pipeline.latent_shape == (RESOLUTION // 2, RESOLUTION // 2, 4)
    x, z = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    pipe.scheduler.set_timesteps(NUM_STEPS)
    t = pipe.scheduler.timesteps[i]

    with torch.no_grad():
        cond_t, uncond_t = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=[""] * len(PROMPTS))
        # The pipeline's denoising loop: one batched UNet call on [uncond; cond], then CFG.
        both = pipe.unet(
            torch.cat([nchw(x)] * 2), t, encoder_hidden_states=torch.cat([uncond_t, cond_t])
        ).sample
        eps_uncond, eps_cond = both.chunk(2)
        eps_want = eps_uncond + scale * (eps_cond - eps_uncond)
        prev_want = pipe.scheduler.step(eps_want, t, nchw(x), eta=ETA, variance_noise=nchw(z)).prev_sample
        decoded = pipe.vae.decode(prev_want / pipe.vae.config.scaling_factor).sample
        images_want = pipe.image_processor.postprocess(decoded, output_type="pt")

    @jax.jit
    def chain(params, frozen, tokens, x, z):
        cond, uncond = ours.pipeline.encode(frozen, {"tokens": tokens})
        b = x.shape[0]
        model_t = jnp.full((b,), ours.pipeline.sampler.model_time(i))
        uncond = jnp.broadcast_to(uncond, cond.shape)
        eps = guided_prediction(ours.pipeline.denoise, params, x, model_t, cond, uncond, scale)
        _, _, mean, std = ours.pipeline.sampler.step(eps, i, x, prev_sample=x)
        prev = mean + std * z
        return eps, prev, ours.pipeline.decode(frozen, prev)

    eps, prev, images = chain(
        ours.params, ours.frozen, ours.tokenize(PROMPTS), jnp.asarray(x), jnp.asarray(z)
    )
    assert float(ours.pipeline.sampler.model_time(i)) == float(t)
    assert_close("CFG noise prediction", eps, nhwc(eps_want))
    assert_close("DDIM prev_sample (same variance noise)", prev, nhwc(prev_want))
    images_want = nhwc(images_want)
    assert float(np.mean((images_want > 0) & (images_want < 1))) > 0.2, (
        "most pixels clipped: nothing compared"
    )
    assert_close("VAE decode (images in [0, 1])", images, images_want)


# ------------------------------------------------------------------------------------------------------------
# Training: the SD1.4 recipe's pieces on the tiny folder.


@pytest.fixture(scope="module")
def training_inputs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("training")
    # A PickScore-shaped CLIPModel whose 8-pixel crop makes the reward's JAX resize of RESOLUTION-pixel
    # images run inside the train step.
    save_tiny_clip_model(tmp / "PickScore-tiny", image_size=8)
    (tmp / "prompts.txt").write_text("a red cat on the mat\na dog in the fog\na photo of a cat\nthe dog\n")
    return {"reward": tmp / "PickScore-tiny", "prompts": tmp / "prompts.txt", "tfds": tmp / "tfds"}


@pytest.fixture(scope="module")
def shared_compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache, for this module only: the converted folder's run compiles exactly
    the diffusers folder's train step, so it loads the executable instead of compiling it again (about 20 s
    on 2 cores). Reset afterwards so that no other test reads or writes it."""
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    yield
    jax.config.update("jax_compilation_cache_dir", previous)
    jax_compilation_cache.reset_cache()


def train_two_steps(
    folder: Path, inputs: dict[str, Path], output_dir: Path, initial: PipelineBundle
) -> tuple[list[dict], grpo.TrainState]:
    """train.run for two GRPO steps of the SD1.4 recipe's pieces (text_file prompts, PickScore-style reward,
    CFG, all but the last transition trained) on ``folder``; returns the metrics and the saved final state
    (restored into the structure of ``initial``'s)."""
    config = load_config(
        sd_config(
            folder,
            sampler={"num_steps": 3},
            loss={"clip_range": 1e-3, "exclude_last_steps": 1},
            optim={"learning_rate": 1e-3},
            train={"num_steps": 2, "checkpoint_every": 2, "output_dir": str(output_dir)},
            reward={"name": "pickscore", "options": {"checkpoint": str(inputs["reward"])}},
            data={
                "name": "text_file",
                "options": {"path": str(inputs["prompts"]), "data_dir": str(inputs["tfds"])},
            },
        )
    )
    history = run(config)
    template = grpo.init_train_state(initial.params, {}, grpo.make_optimizer(config), config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    trained, _ = Checkpointer(output_dir / "checkpoints").restore(
        template, jax.tree.map(lambda _: device, template)
    )
    return history, trained


def test_tiny_sd_folder_converts_and_trains_two_grpo_steps(
    reference, converted, ours, training_inputs, shared_compilation_cache, tmp_path
):
    """A tiny diffusers-format SD folder written by save_pretrained converts and trains two GRPO steps on CPU,
    from the diffusers folder and from the converted one, identically."""
    runs = {
        source: train_two_steps(folder, training_inputs, tmp_path / source, ours)
        for source, folder in (("diffusers", reference[1]), ("converted", converted))
    }
    for source, (history, trained) in runs.items():
        assert len(history) == 2 and int(trained.step) == 2, source
        for record in history:
            assert all(np.isfinite(v) for v in record.values()), (source, record)
            assert record["first_ratio_max_dev"] < 1e-5, (source, record)
            assert record["grad_norm"] > 0, (source, record)
        deltas = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), trained.params, ours.params))
        assert max(float(d) for d in deltas) > 1e-4, f"{source}: the UNet did not change"
    (diffusers_history, diffusers_state), (converted_history, converted_state) = runs.values()
    for a, b in zip(diffusers_history, converted_history, strict=True):
        assert {k: v for k, v in a.items() if k != "step_time_s"} == pytest.approx(
            {k: v for k, v in b.items() if k != "step_time_s"}, rel=1e-6, abs=1e-9
        )
    for a, b in zip(
        jax.tree.leaves(diffusers_state.params), jax.tree.leaves(converted_state.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------------------------
# The SD1.4 recipe from the command line, and torch-free loading.


def test_sd_recipe_without_weights_fails_with_one_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n")
    out = run_module(
        "slas_jax.train",
        "--config",
        ROOT / "configs" / "sd_tpu.py",
        f"--config.data.options.path={prompts}",
        f"--config.train.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,  # so the default checkpoints/stable-diffusion-v1-4 surely does not exist
        # The prompt set is stored before the checkpoint is opened: in ~/tensorflow_datasets, here a temporary one.
        env={"JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)},
    )
    line = one_line_error(out)
    assert "checkpoints/stable-diffusion-v1-4 does not exist" in line, line
    assert "unet/config.json" in line and "tokenizer/tokenizer_config.json" in line, line
    assert "CompVis/stable-diffusion-v1-4" in line, line
    # The reward's weights are missing too, and the same line says so.
    assert "and the reward: HPS-v2.1 folder checkpoints/hps_v2.1 does not exist" in line, line
    assert "open_clip_pytorch_model.bin" in line and "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in line, line
    assert "Traceback" not in out.stderr


def test_an_exported_policy_of_a_checkpoint_model_loads_back_over_its_checkpoint(converted, tmp_path):
    """export_policy stores the trained UNet alone; load_policy rebuilds the model from the checkpoint folder
    the policy records, with that UNet in place of the checkpoint's and the checkpoint's own text encoder."""
    config = load_config(sd_config(converted))
    base = build_pipeline(config)
    trained = jax.tree.map(lambda x: x + 0.01, base.params)
    export_policy(tmp_path / "policy", config, trained, base.frozen, {"step": 7})
    assert stored_groups(tmp_path / "policy") == {"backbone"}
    loaded_config, loaded = load_policy(tmp_path / "policy")
    assert loaded_config.model.checkpoint == str(converted)
    assert loaded_config.model.init_checkpoint == str(tmp_path / "policy")
    assert loaded_config.sampler == config.sampler
    np.testing.assert_array_equal(flat(loaded.params), flat(trained))
    np.testing.assert_array_equal(flat(loaded.frozen["text"]), flat(base.frozen["text"]))


def test_converted_folder_loads_and_generates_without_torch(converted):
    """``import slas_jax``, loading the converted folder and one generation import neither torch nor
    diffusers, and never read safetensors."""
    script = textwrap.dedent(
        f"""
        import sys
        import jax
        import slas_jax
        from slas_jax.models import conversion

        def refuse(*args, **kwargs):
            raise AssertionError("safetensors read while loading a converted folder")

        conversion.read_weights = conversion.read_safetensors = refuse
        from slas_jax import grpo
        from slas_jax.config import load_config
        from slas_jax.pipelines import build_pipeline

        config = load_config({sd_config(converted, sampler={"num_steps": 2})!r})
        bundle = build_pipeline(config)
        images = grpo.make_generate(bundle.pipeline, config)(
            bundle.params, bundle.frozen, {{"tokens": bundle.tokenize(["a red cat"])}}, jax.random.PRNGKey(0)
        )
        assert images.shape == (1, {RESOLUTION}, {RESOLUTION}, 3), images.shape
        loaded = sorted(m for m in ("torch", "diffusers", "safetensors.torch") if m in sys.modules)
        print("heavy modules:", loaded)
        assert not loaded, loaded
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "heavy modules: []" in out.stdout
