"""Parity of our Flax AutoencoderKL with diffusers' (SD-style 4-channel and FLUX-style 16-channel latents),
the latent scaling helpers, older attention names, and published parameter counts without allocation."""

import diffusers
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file
from tiny_checkpoints import perturbed

from slas_jax.models import conversion, vae
from slas_jax.models.conversion import ConversionError

pytestmark = pytest.mark.parity

TINY_CONFIGS = {
    # SD-style: 4 latent channels, quant convs, no latent shift (shift_factor null).
    "sd_style": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.18215,
    ),
    # FLUX-style: 16 latent channels, no quant convs, shifted latents, one more level and resnet per block.
    "flux_style": dict(
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
}

PUBLISHED_BLOCKS = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def randomised_vae(config: dict, seed: int) -> diffusers.AutoencoderKL:
    """A diffusers VAE with every parameter perturbed (norm scales away from 1, biases away from 0)."""
    torch.manual_seed(seed)
    return perturbed(diffusers.AutoencoderKL(**config))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def vae_pair(request, tmp_path_factory):
    """(name, torch reference, our model loaded from its save_pretrained folder, that folder)."""
    name = request.param
    reference = randomised_vae(TINY_CONFIGS[name], seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    return name, reference, vae.load_vae(folder), folder


def check_close(name: str, got: jax.Array, want: np.ndarray) -> float:
    """Asserts max |got - want| < 1e-4 x max(1, max |want|) and returns the error."""
    err = float(np.abs(np.asarray(got) - want).max())
    tol = 1e-4 * max(1.0, float(np.abs(want).max()))
    assert err < tol, f"{name}: max abs error {err:.3g} >= {tol:.3g}"
    print(f"{name}: max abs error {err:.3g} (tolerance {tol:.3g})")
    return err


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.transpose(0, 3, 1, 2))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


def test_vae_matches_diffusers(vae_pair):
    name, reference, ours, _ = vae_pair
    config = TINY_CONFIGS[name]
    scale, shift = config["scaling_factor"], config.get("shift_factor", 0.0)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    latents = rng.standard_normal((2, 4, 4, config["latent_channels"]), dtype=np.float32)
    with torch.no_grad():
        posterior = reference.encode(nchw(images)).latent_dist
        mean, logvar = nhwc(posterior.mean), nhwc(posterior.logvar)
        decoded = nhwc(reference.decode(nchw(latents / scale + shift)).sample)

    key = jax.random.key(0)

    @nnx.jit
    def run(model):
        return model.encode(images), model.latents_from_image(images, key), model.image_from_latents(latents)

    (got_mean, got_logvar), got_latents, got_decoded = run(ours)
    check_close(f"vae {name} encode mean", got_mean, mean)
    check_close(f"vae {name} encode logvar", got_logvar, logvar)
    # A posterior sample with the same key's noise, shifted and scaled for the diffusion model.
    noise = np.asarray(jax.random.normal(key, mean.shape))
    check_close(
        f"vae {name} latents_from_image", got_latents, (mean + np.exp(0.5 * logvar) * noise - shift) * scale
    )
    check_close(f"vae {name} image_from_latents", got_decoded, decoded)
    assert got_latents.shape == (
        2,
        16 // ours.config.downscale,
        16 // ours.config.downscale,
        config["latent_channels"],
    )


def test_older_attention_names_and_conv_shaped_weights_convert(vae_pair):
    _, _, ours, folder = vae_pair
    tensors = {}
    for key, value in load_file(folder / "diffusion_pytorch_model.safetensors").items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        # Conversions from the original LDM checkpoints kept the projections as 1x1 convs.
        tensors[key] = value[:, :, None, None] if key.endswith("query.weight") else value
    assert any("proj_attn" in k for k in tensors)
    old = conversion.load_module(
        lambda: vae.AutoencoderKL(ours.config, rngs=nnx.Rngs(0)), tensors, vae.CONVERSION_RULES
    )
    for a, b in zip(jax.tree.leaves(nnx.state(old)), jax.tree.leaves(nnx.state(ours)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("ours", "reference_config", "published"),
    [
        (vae.VAEConfig.sd14(), dict(latent_channels=4), 83_653_863),
        (
            vae.VAEConfig.flux1(),
            dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False),
            83_819_683,
        ),
        (
            vae.VAEConfig.sd14(mid_block_add_attention=False),
            dict(latent_channels=4, mid_block_add_attention=False),
            None,
        ),
    ],
    ids=["sd14", "flux1", "sd14_no_mid_attention"],
)
def test_published_parameter_counts_match_diffusers_without_allocating(ours, reference_config, published):
    with torch.device("meta"):
        reference = diffusers.AutoencoderKL(**PUBLISHED_BLOCKS, **reference_config)
    want = sum(p.numel() for p in reference.parameters())
    abstract = nnx.eval_shape(lambda: vae.AutoencoderKL(ours, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == want
    assert published is None or want == published


def test_config_reads_diffusers_keys_and_refuses_unsupported_settings():
    config = vae.VAEConfig.from_dict(
        {**TINY_CONFIGS["flux_style"], "force_upcast": True, "_class_name": "AutoencoderKL"}
    )
    assert (config.latent_channels, config.shift_factor, config.use_quant_conv) == (16, 0.1159, False)
    assert vae.VAEConfig.from_dict({"shift_factor": None}).shift_factor == 0.0
    with pytest.raises(ConversionError, match="latents_mean"):
        vae.VAEConfig.from_dict({"latents_mean": [0.0] * 4})
    with pytest.raises(ConversionError, match="AttnDownEncoderBlock2D"):
        vae.VAEConfig.from_dict(
            {
                "down_block_types": ["AttnDownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D"],
                "block_out_channels": [8],
            }
        )
