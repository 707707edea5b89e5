"""Parity of our Flax UNet2DConditionModel with diffusers' on tiny random configs, conversion and config
checks, and the SD1.4 parameter count without allocating either model."""

import json

import diffusers
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from tiny_checkpoints import perturbed

from slas_jax.models import unet
from slas_jax.models.conversion import ConversionError

pytestmark = pytest.mark.parity

# Two tiny SD-shaped UNets: SD1-style (conv projections, one head count for all blocks) and SD2-style
# (linear projections, per-block heads / depths / transformer layers, the other timestep-embedding order).
TINY_CONFIGS = {
    "sd1_style": dict(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "sd2_style": dict(
        sample_size=16,
        block_out_channels=(32, 32, 64),
        layers_per_block=(1, 2, 1),
        transformer_layers_per_block=(1, 2, 1),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=40,
        attention_head_dim=(2, 4, 8),
        norm_num_groups=8,
        use_linear_projection=True,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
}


def randomised_unet(config: dict, seed: int) -> diffusers.UNet2DConditionModel:
    """A diffusers UNet whose every parameter is perturbed, so norm scales (init 1) and biases (init 0) differ
    from each other and from their defaults: a swapped or skipped tensor cannot pass the parity check."""
    torch.manual_seed(seed)
    return perturbed(diffusers.UNet2DConditionModel(**config))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def unet_pair(request, tmp_path_factory):
    """(name, torch reference, our model loaded from its save_pretrained folder)."""
    name = request.param
    reference = randomised_unet(TINY_CONFIGS[name], seed=len(name))
    pipeline = tmp_path_factory.mktemp(name)
    reference.save_pretrained(pipeline / "unet")
    if name == "sd2_style":  # as in a pipeline folder: the scheduler config says what the UNet predicts
        (pipeline / "scheduler").mkdir()
        (pipeline / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"prediction_type": "v_prediction"})
        )
    return name, reference, unet.load_unet(pipeline / "unet")


def max_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs difference, tolerance 1e-4 x max(1, max |want|))."""
    return float(np.abs(got - want).max()), 1e-4 * max(1.0, float(np.abs(want).max()))


def test_unet_matches_diffusers(unet_pair):
    name, reference, ours = unet_pair
    rng = np.random.default_rng(0)
    # 18 x 14 is not divisible by 2**depth: the up path must resize to the skip connections' sizes as diffusers.
    sample = rng.standard_normal((2, 18, 14, 4), dtype=np.float32)
    context = rng.standard_normal((2, 7, TINY_CONFIGS[name]["cross_attention_dim"]), dtype=np.float32)
    # One config gets a fractional per-example timestep vector, the other a scalar broadcast over the batch.
    timesteps = np.array([3.5, 999.0], np.float32) if name == "sd2_style" else 250
    with torch.no_grad():
        want = reference(
            torch.from_numpy(sample.transpose(0, 3, 1, 2)), torch.tensor(timesteps), torch.from_numpy(context)
        ).sample.numpy()
    got = np.asarray(nnx.jit(lambda m, x, c: m(x, timesteps, c))(ours, sample, context))
    err, tol = max_error(got, want.transpose(0, 2, 3, 1))
    assert err < tol, f"{name}: max abs error {err:.3g} >= {tol:.3g}"
    print(f"unet {name}: max abs error {err:.3g} (tolerance {tol:.3g})")
    assert ours.config.prediction_type == ("v_prediction" if name == "sd2_style" else "epsilon")


def test_remat_config_checkpoints_blocks_in_the_backward_pass():
    tiny = dict(
        block_out_channels=(16,),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    sample, context = np.ones((1, 4, 4, 4), np.float32), np.ones((1, 3, 8), np.float32)

    def backward_jaxpr(remat: bool) -> str:
        config = unet.UNetConfig.from_dict(tiny, remat=remat)
        model = nnx.eval_shape(lambda: unet.UNet2DConditionModel(config, rngs=nnx.Rngs(0)))  # traced only
        graphdef = nnx.graphdef(model)
        grad = nnx.grad(lambda m: m(sample, 10.0, context).sum())
        return str(jax.make_jaxpr(lambda state: grad(nnx.merge(graphdef, state)))(nnx.state(model)))

    assert "remat" in backward_jaxpr(True)
    assert "remat" not in backward_jaxpr(False)


def test_remat_keeps_values_and_gradients():
    def block(remat: bool) -> unet.Transformer2DModel:
        return unet.Transformer2DModel(
            16,
            heads=2,
            num_layers=2,
            cross_attention_dim=8,
            groups=4,
            use_linear_projection=False,
            remat=remat,
            rngs=nnx.Rngs(0),
        )

    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 4, 16), dtype=np.float32)
    context = rng.standard_normal((1, 3, 8), dtype=np.float32)
    loss_and_grad = nnx.jit(nnx.value_and_grad(lambda m: (m(x, context) ** 2).mean()))
    (loss_a, grad_a), (loss_b, grad_b) = loss_and_grad(block(False)), loss_and_grad(block(True))
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sd14_parameter_count_matches_diffusers_without_allocating():
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8
        )
    want = sum(p.numel() for p in reference.parameters())
    abstract = nnx.eval_shape(lambda: unet.UNet2DConditionModel(unet.UNetConfig.sd14(), rngs=nnx.Rngs(0)))
    got = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert got == want == 859_520_964


@pytest.mark.parametrize(
    ("key", "value"),
    [("class_embed_type", "timestep"), ("resnet_time_scale_shift", "scale_shift"), ("mid_block_type", None)],
)
def test_unsupported_config_is_refused_by_name(key, value):
    with pytest.raises(ConversionError, match=key):
        unet.UNetConfig.from_dict({**TINY_CONFIGS["sd1_style"], key: value})


def test_bad_block_type_and_lengths_are_refused():
    with pytest.raises(ConversionError, match="AttnDownBlock2D"):
        unet.UNetConfig.from_dict(
            {**TINY_CONFIGS["sd1_style"], "down_block_types": ["AttnDownBlock2D", "DownBlock2D"]}
        )
    with pytest.raises(ConversionError, match=r"attention_head_dim|num_attention_heads"):
        unet.UNetConfig.from_dict({**TINY_CONFIGS["sd1_style"], "attention_head_dim": [2, 4, 8]})
