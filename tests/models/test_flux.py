"""Parity of our Flax FluxTransformer2DModel with diffusers' on tiny random configs, FluxPipeline's input
helpers, conversion and config checks, and the FLUX.1-dev parameter count without allocating either model."""

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from flax import nnx
from tiny_checkpoints import perturbed

from slas_jax.models import clip, conversion, flux, t5
from slas_jax.models.conversion import ConversionError

pytestmark = pytest.mark.parity

# Two tiny FLUX-shaped transformers: guidance-distilled (like FLUX.1-dev) and not (like schnell), with
# different head counts / head dims / rotary splits / depths (each with at least two blocks of both kinds),
# and a latent width whose packed tokens (4 x 4 channels) differ from the output width in the second.
TINY_CONFIGS = {
    "dev_like": dict(
        in_channels=16,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=20,
        pooled_projection_dim=12,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
    "schnell_like": dict(
        in_channels=16,
        out_channels=8,
        num_layers=3,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=3,
        joint_attention_dim=24,
        pooled_projection_dim=10,
        guidance_embeds=False,
        axes_dims_rope=(2, 2, 4),
    ),
}

# transformer/config.json of black-forest-labs/FLUX.1-dev, as published (no axes_dims_rope: the default).
FLUX1_DEV_CONFIG_JSON = {
    "_class_name": "FluxTransformer2DModel",
    "_diffusers_version": "0.30.0.dev0",
    "attention_head_dim": 128,
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}


def randomised_flux(config: dict, seed: int) -> diffusers.FluxTransformer2DModel:
    """A diffusers FLUX transformer whose every parameter is perturbed, so q/k norm scales (init 1) and
    biases differ from each other and from their defaults: a swapped or skipped tensor cannot pass parity."""
    torch.manual_seed(seed)
    return perturbed(diffusers.FluxTransformer2DModel(**config))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def flux_pair(request, tmp_path_factory):
    """(name, torch reference, its save_pretrained folder, our model loaded from it)."""
    name = request.param
    reference = randomised_flux(TINY_CONFIGS[name], seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    return name, reference, folder, flux.load_flux_transformer(folder)


def max_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs difference, tolerance 1e-4 x max(1, max |want|))."""
    return float(np.abs(got - want).max()), 1e-4 * max(1.0, float(np.abs(want).max()))


def tiny_inputs(name: str, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Float32 inputs as FluxPipeline builds them for a 8 x 6 latent (12 packed tokens) and 7 text tokens.
    Timesteps in [0, 1] (the pipeline passes timestep / 1000); a guidance scale per example if embedded."""
    config = TINY_CONFIGS[name]
    rng = np.random.default_rng(seed)
    batch, txt = 2, 7
    latents = rng.standard_normal((batch, 8, 6, config["in_channels"] // 4), dtype=np.float32)
    return dict(
        hidden_states=np.array(flux.pack_latents(jnp.asarray(latents))),  # writable, for torch.from_numpy
        encoder_hidden_states=rng.standard_normal(
            (batch, txt, config["joint_attention_dim"]), dtype=np.float32
        ),
        pooled_projections=rng.standard_normal((batch, config["pooled_projection_dim"]), dtype=np.float32),
        timestep=np.array([0.3, 0.95], np.float32),
        img_ids=np.array(flux.image_ids(4, 3)),
        txt_ids=np.array(flux.text_ids(txt)),
        guidance=np.array([3.5, 1.0], np.float32) if config["guidance_embeds"] else None,
    )


def test_flux_matches_diffusers(flux_pair):
    name, reference, _, ours = flux_pair
    inputs = tiny_inputs(name)
    with torch.no_grad():
        want = reference(
            **{k: None if v is None else torch.from_numpy(v) for k, v in inputs.items()}
        ).sample.numpy()
    got = np.asarray(nnx.jit(lambda m, kw: m(**kw))(ours, inputs))
    assert got.shape == (2, 12, reference.out_channels)
    err, tol = max_error(got, want)
    assert err < tol, f"flux {name}: max abs error {err:.3g} >= {tol:.3g}"
    print(f"flux {name}: max abs error {err:.3g} (tolerance {tol:.3g})")


def test_bfloat16_compute_stays_close_to_float32():
    inputs = tiny_inputs("dev_like", seed=1)
    forward = nnx.jit(lambda m, kw: m(**kw))

    def model(dtype) -> flux.FluxTransformer2DModel:  # same seed: same float32 parameters
        return flux.FluxTransformer2DModel(
            flux.FluxConfig(**TINY_CONFIGS["dev_like"], dtype=dtype), rngs=nnx.Rngs(5)
        )

    want = np.asarray(forward(model(jnp.float32), inputs))
    low = model(jnp.bfloat16)
    assert low.x_embedder.kernel.get_value().dtype == jnp.float32
    got = forward(low, inputs)
    assert got.dtype == jnp.float32
    assert np.abs(np.asarray(got) - want).max() < 0.05 * np.abs(want).max()


def test_guidance_must_match_the_config(flux_pair):
    name, _, _, ours = flux_pair
    inputs = tiny_inputs(name)
    inputs["guidance"] = None if TINY_CONFIGS[name]["guidance_embeds"] else np.ones(2, np.float32)
    with pytest.raises(ValueError, match="guidance"):
        ours(**inputs)


def test_text_encoders_and_transformer_chain_as_flux_pipeline(tmp_path):
    """FluxPipeline's conditioning path after tokenisation: CLIP's pooled output and T5's last hidden state
    (no attention mask: the pipeline lets padding attend) feed the transformer. Ours, loaded from the same
    folders, must give the same velocity."""
    config = TINY_CONFIGS["dev_like"]
    torch.manual_seed(1)
    clip_ref = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=30,
            hidden_size=config["pooled_projection_dim"],
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=9,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,  # pooled at the largest token id, as CLIP-L's original config
        )
    ).eval()
    t5_ref = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=40,
            d_model=config["joint_attention_dim"],
            d_kv=5,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    ).eval()
    flux_ref = randomised_flux(config, seed=3)
    with torch.no_grad():
        for p in [*clip_ref.parameters(), *t5_ref.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    for name, model in (("text_encoder", clip_ref), ("text_encoder_2", t5_ref), ("transformer", flux_ref)):
        model.save_pretrained(tmp_path / name)

    rng = np.random.default_rng(4)
    clip_ids = rng.integers(0, 29, (2, 9))
    clip_ids[:, 6] = 29  # the end-of-text token: the largest id
    t5_ids = rng.integers(0, 40, (2, 7))
    inputs = tiny_inputs("dev_like", seed=5)
    with torch.no_grad():
        pooled = clip_ref(torch.from_numpy(clip_ids)).pooler_output
        features = t5_ref(torch.from_numpy(t5_ids)).last_hidden_state
        torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
        torch_inputs.update(pooled_projections=pooled, encoder_hidden_states=features)
        want = flux_ref(**torch_inputs).sample.numpy()

    clip_ours = clip.load_clip_text(tmp_path / "text_encoder")
    t5_ours = t5.load_t5_encoder(tmp_path / "text_encoder_2")
    flux_ours = flux.load_flux_transformer(tmp_path / "transformer")

    @nnx.jit
    def velocity(clip_model, t5_model, flux_model, clip_ids, t5_ids, inputs):
        inputs = dict(inputs, pooled_projections=clip_model(clip_ids).pooler_output)
        return flux_model(**dict(inputs, encoder_hidden_states=t5_model(t5_ids)))

    got = np.asarray(
        velocity(clip_ours, t5_ours, flux_ours, clip_ids.astype(np.int32), t5_ids.astype(np.int32), inputs)
    )
    err, tol = max_error(got, want)
    assert err < tol, f"flux pipeline conditioning: max abs error {err:.3g} >= {tol:.3g}"
    print(
        f"flux pipeline conditioning (CLIP + T5 + transformer): max abs error {err:.3g} (tolerance {tol:.3g})"
    )


def test_pack_unpack_and_ids_match_flux_pipeline():
    rng = np.random.default_rng(0)
    batch, channels, height, width = 2, 16, 8, 12
    latents = rng.standard_normal((batch, channels, height, width), dtype=np.float32)  # NCHW, as torch
    nhwc = jnp.asarray(latents.transpose(0, 2, 3, 1))

    packed = flux.pack_latents(nhwc)
    want = FluxPipeline._pack_latents(torch.from_numpy(latents), batch, channels, height, width)
    np.testing.assert_array_equal(np.asarray(packed), want.numpy())
    np.testing.assert_array_equal(np.asarray(flux.unpack_latents(packed, height, width)), np.asarray(nhwc))
    # The pipeline's unpack takes pixel sizes (8x the latent's) and returns NCHW.
    unpacked = FluxPipeline._unpack_latents(want, 8 * height, 8 * width, vae_scale_factor=8)
    np.testing.assert_array_equal(
        np.asarray(flux.unpack_latents(packed, height, width)), unpacked.permute(0, 2, 3, 1)
    )

    ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32)
    np.testing.assert_array_equal(np.asarray(flux.image_ids(height // 2, width // 2)), ids.numpy())
    np.testing.assert_array_equal(np.asarray(flux.text_ids(5)), np.zeros((5, 3), np.float32))


def test_rope_matches_diffusers_flux_pos_embed():
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = torch.cat(
        [torch.zeros(3, 3), FluxPipeline._prepare_latent_image_ids(1, 64, 64, "cpu", torch.float32)]
    )
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
    got = np.asarray(flux.rope_frequencies(jnp.asarray(ids.numpy()), (16, 56, 56)))
    np.testing.assert_allclose(got[0], cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(got[1], sin.numpy(), atol=1e-5)


def test_blocks_are_scanned_stacks():
    config = flux.FluxConfig(**TINY_CONFIGS["dev_like"])
    model = nnx.eval_shape(lambda: flux.FluxTransformer2DModel(config, rngs=nnx.Rngs(0)))
    add_q = model.transformer_blocks.attn.add_q_proj.kernel
    assert add_q.shape == (2, 32, 32)
    assert add_q.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
    assert model.single_transformer_blocks.proj_out.kernel.shape == (3, 32 + 128, 32)
    inputs = tiny_inputs("dev_like")
    jaxpr = str(jax.make_jaxpr(lambda m: m(**inputs))(model))
    assert jaxpr.count("scan[") == 2  # one body per stack, not one per layer


def test_remat_checkpoints_each_block_in_the_backward_pass():
    # Values and gradients under remat are checked on the shared scan helper in test_t5.py; here only that
    # the option reaches both FLUX stacks (traced, not compiled).
    inputs = tiny_inputs("schnell_like")

    def backward_jaxpr(remat: bool) -> str:
        config = flux.FluxConfig(**TINY_CONFIGS["schnell_like"], remat=remat)
        model = nnx.eval_shape(lambda: flux.FluxTransformer2DModel(config, rngs=nnx.Rngs(0)))
        return str(jax.make_jaxpr(nnx.grad(lambda m: m(**inputs).sum()))(model))

    assert backward_jaxpr(True).count("remat") >= 2  # one per stack body
    assert "remat" not in backward_jaxpr(False)


def _convert(tensors, config: flux.FluxConfig):
    abstract = nnx.state(nnx.eval_shape(lambda: flux.FluxTransformer2DModel(config, rngs=nnx.Rngs(0))))
    return conversion.convert_tensors(tensors, flux.CONVERSION_RULES, abstract, ignore=flux.IGNORED)


def test_conversion_errors_name_the_tensor(flux_pair):
    name, _, folder, _ = flux_pair
    config = flux.FluxConfig(**TINY_CONFIGS[name])
    tensors = dict(conversion.read_weights(folder))
    _convert(tensors, config)  # the unmodified checkpoint converts

    extra = {**tensors, "transformer_blocks.0.attn.extra.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(ConversionError, match=r"transformer_blocks\.0\.attn\.extra"):
        _convert(extra, config)

    last = config.num_single_layers - 1
    missing = {k: v for k, v in tensors.items() if not k.startswith(f"single_transformer_blocks.{last}.")}
    with pytest.raises(ConversionError, match=rf"single_transformer_blocks\..*missing layers \[{last}\]"):
        _convert(missing, config)

    key = "transformer_blocks.1.ff_context.net.0.proj.weight"
    wrong = {**tensors, key: np.zeros((3, 5), np.float32)}
    with pytest.raises(ConversionError, match=rf"{key}.*shape \(5, 3\)"):
        _convert(wrong, config)


def test_flux1_dev_config_json_is_the_preset():
    assert flux.FluxConfig.from_dict(FLUX1_DEV_CONFIG_JSON) == flux.FluxConfig.flux1_dev()


def test_flux1_dev_parameter_count_matches_diffusers_without_allocating():
    with torch.device("meta"):
        reference = diffusers.FluxTransformer2DModel(guidance_embeds=True)
    want = sum(p.numel() for p in reference.parameters())
    abstract = nnx.eval_shape(
        lambda: flux.FluxTransformer2DModel(flux.FluxConfig.flux1_dev(), rngs=nnx.Rngs(0))
    )
    got = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert got == want == 11_901_408_320


@pytest.mark.parametrize(
    ("key", "value"), [("patch_size", 2), ("axes_dims_rope", [16, 56, 40]), ("qk_norm", "ln")]
)
def test_unsupported_config_is_refused_by_name(key, value):
    with pytest.raises(ConversionError, match=key):
        flux.FluxConfig.from_dict({**TINY_CONFIGS["dev_like"], key: value})
