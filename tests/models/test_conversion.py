"""The declarative converter refuses checkpoints that do not fit the model, naming the offending tensor or
file: an extra tensor, a missing one, a wrong shape, a missing folder / config / weights file."""

import json

import diffusers
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from slas_jax.models import conversion, vae
from slas_jax.models.conversion import ConversionError

TINY_VAE = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, np.ndarray]:
    """A complete diffusers AutoencoderKL state dict (reference names and layouts) as numpy arrays."""
    torch.manual_seed(0)
    return {k: v.numpy() for k, v in diffusers.AutoencoderKL(**TINY_VAE).state_dict().items()}


def load(tensors: dict[str, np.ndarray]) -> vae.AutoencoderKL:
    config = vae.VAEConfig.from_dict(TINY_VAE)
    return conversion.load_module(
        lambda: vae.AutoencoderKL(config, rngs=nnx.Rngs(0)), tensors, vae.CONVERSION_RULES, source="tiny vae"
    )


def test_complete_checkpoint_fills_every_parameter_once(checkpoint):
    model = load(checkpoint)
    np.testing.assert_array_equal(model.encoder.conv_in.bias[...], checkpoint["encoder.conv_in.bias"])
    np.testing.assert_array_equal(  # OIHW -> HWIO
        model.decoder.conv_out.kernel[...], checkpoint["decoder.conv_out.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(  # Linear (out, in) -> (in, out)
        model.decoder.mid_block.attentions[0].to_q.kernel[...],
        checkpoint["decoder.mid_block.attentions.0.to_q.weight"].T,
    )


def test_extra_tensor_is_named(checkpoint):
    with pytest.raises(
        ConversionError, match=r"tiny vae: tensor decoder\.extra_head\.weight maps to .* does not have"
    ):
        load({**checkpoint, "decoder.extra_head.weight": np.zeros((3, 3), np.float32)})


def test_missing_tensor_is_named(checkpoint):
    tensors = dict(checkpoint)
    del tensors["encoder.down_blocks.1.resnets.0.norm2.bias"]
    with pytest.raises(
        ConversionError, match=r"encoder\.down_blocks\.1\.resnets\.0\.norm2\.bias is not filled"
    ):
        load(tensors)


def test_wrong_shape_is_named(checkpoint):
    tensors = {**checkpoint, "decoder.conv_in.weight": np.zeros((16, 4, 1, 1), np.float32)}
    with pytest.raises(
        ConversionError,
        match=r"decoder\.conv_in\.weight has shape \(1, 1, 4, 16\) .* expects \(3, 3, 4, 16\)",
    ):
        load(tensors)


def test_loader_names_the_file_problem(tmp_path, checkpoint):
    with pytest.raises(ConversionError, match=r"absent/config\.json"):
        vae.load_vae(tmp_path / "absent")
    with pytest.raises(ConversionError, match=r"config\.json"):
        vae.load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_VAE))
    with pytest.raises(ConversionError, match=r"no \*\.safetensors"):
        vae.load_vae(tmp_path)
    # Through the whole file path: a checkpoint missing one tensor fails with that tensor's name.
    save_file(
        {k: v for k, v in checkpoint.items() if k != "quant_conv.bias"},
        tmp_path / "diffusion_pytorch_model.safetensors",
    )
    with pytest.raises(ConversionError, match=r"quant_conv\.bias is not filled"):
        vae.load_vae(tmp_path)
