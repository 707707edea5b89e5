"""Specification of the architecture mappings of randomly initialised models: a mapping that the model classes
cannot build or run is refused with one line naming the field, before anything is initialised; one they can
is accepted and builds the model it describes."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from slas_jax.config import ModelConfig
from slas_jax.errors import ConfigError
from slas_jax.models import flux, unet
from slas_jax.pipelines.architectures import check_architecture, flux_config, text_encoder_config, unet_config
from slas_jax.tokenizers import WordTokenizer

UNET = {
    "block_out_channels": (8, 16),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "num_attention_heads": 2,
    "norm_num_groups": 4,
}
FLUX = {
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "axes_dims_rope": (2, 2, 4),
}
TEXT = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "projection_dim": 16,
}

BAD = [
    # (family, architecture overrides, text overrides, the field named, words of the reason)
    ("unet", {"nope": 1}, {}, "architecture.nope", "unknown key; valid keys here are"),
    ("unet", {"in_channels": 4}, {}, "architecture.in_channels", "set by the pipeline to 3"),
    ("unet", {"layers_per_block": "two"}, {}, "architecture.layers_per_block", "must be an integer or"),
    (
        "unet",
        {"block_out_channels": (8, 0)},
        {},
        "architecture.block_out_channels",
        "positive channel counts",
    ),
    ("unet", {"up_block_types": ("UpBlock2D",)}, {}, "architecture.up_block_types", "one entry per"),
    ("unet", {"down_block_types": ("Down", "DownBlock2D")}, {}, "architecture.down_block_types", "'Down'"),
    ("unet", {"layers_per_block": (1, 1, 1)}, {}, "architecture.layers_per_block", "2 integers"),
    ("unet", {"norm_num_groups": 3}, {}, "architecture.norm_num_groups", "3 groups do not divide"),
    (
        "unet",
        {"num_attention_heads": 9},
        {},
        "architecture.num_attention_heads",
        "9 heads exceed block 0",
    ),
    ("unet", {"conv_in_kernel": 2}, {}, "architecture.conv_in_kernel", "positive odd integer"),
    ("unet", {"freq_shift": 4}, {}, "architecture.freq_shift", "must be in [0,"),
    ("unet", {"prediction_type": "sample"}, {}, "architecture.prediction_type", "'epsilon' or"),
    ("unet", {}, {"hidden_size": -32}, "text_architecture.hidden_size", "must be >= 1"),
    (
        "unet",
        {},
        {"num_attention_heads": 5},
        "text_architecture.num_attention_heads",
        "5 heads do not divide",
    ),
    ("unet", {}, {"hidden_act": "relu6"}, "text_architecture.hidden_act", "must be one of"),
    ("unet", {}, {"vocab_size": 10}, "text_architecture.vocab_size", "set by the pipeline from the word"),
    ("flux", {"num_layers": 0}, {}, "architecture.num_layers", "must be >= 1"),
    (
        "flux",
        {"axes_dims_rope": (2, 2, 2)},
        {},
        "architecture.axes_dims_rope",
        "summing to attention_head_dim",
    ),
    ("flux", {"axes_dims_rope": (1, 3, 4)}, {}, "architecture.axes_dims_rope", "3 even numbers"),
    ("flux", {"joint_attention_dim": 8}, {}, "architecture.joint_attention_dim", "from text_architecture"),
]


@pytest.mark.parametrize(
    ("family", "arch", "text", "field", "reason"), BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD]
)
def test_a_bad_mapping_is_one_line_naming_its_field(family, arch, text, field, reason):
    base = UNET if family == "unet" else FLUX
    with pytest.raises(ConfigError) as raised:
        check_architecture(family, {**base, **arch}, {**TEXT, **text})
    message = str(raised.value)
    assert message.startswith(f"config.model.{field}") and reason in message and "\n" not in message


def test_the_model_config_checks_its_mappings_when_validated():
    with pytest.raises(ConfigError, match=r"^config\.model\.architecture\.norm_num_groups"):
        ModelConfig(architecture={**UNET, "norm_num_groups": 3}).validate("model")
    with pytest.raises(ConfigError, match=r"remove it or unset model\.checkpoint"):
        ModelConfig(checkpoint="/a/folder", architecture=UNET).validate("model")


def unet_output_shape(config: unet.UNetConfig) -> tuple[int, ...]:
    """Builds the UNet of ``config`` and runs it on one 8x8 image, abstractly (no arrays are computed)."""

    def forward():
        net = unet.UNet2DConditionModel(config, rngs=nnx.Rngs(0))
        return net(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1, 4, 16)))

    return jax.eval_shape(forward).shape


def flux_output_shape(config: flux.FluxConfig) -> tuple[int, ...]:
    """Builds the FLUX transformer of ``config`` and runs it on 16 image and 4 text tokens, abstractly."""

    def forward():
        net = flux.FluxTransformer2DModel(config, rngs=nnx.Rngs(0))
        return net(
            jnp.zeros((1, 16, 12)),
            jnp.zeros((1, 4, 16)),
            jnp.zeros((1, 16)),
            jnp.zeros((1,)),
            jnp.zeros((16, 3)),
            jnp.zeros((4, 3)),
        )

    return jax.eval_shape(forward).shape


def random_model(family: str, arch: dict) -> tuple[ModelConfig, object]:
    model = ModelConfig(family=family, resolution=8, architecture=arch, text_architecture=TEXT)
    return model, text_encoder_config(model, WordTokenizer(["a", "b"], 4))


@pytest.mark.parametrize(
    "arch",
    [{"norm_num_groups": 3}, {"num_attention_heads": 9}],
    ids=["groups", "heads"],
)
def test_the_checks_refuse_what_the_unet_cannot_run(arch):
    """The checks are not stricter than the model: without them, the same mapping fails inside the model."""
    model, text = random_model("unet", {**UNET, **arch})
    with pytest.raises((ValueError, TypeError, ZeroDivisionError)):
        unet_output_shape(unet_config(model, text))


def test_an_accepted_unet_mapping_builds_the_model_it_describes():
    check_architecture("unet", UNET, TEXT)
    model, text = random_model("unet", UNET)
    assert (text.hidden_size, text.max_position_embeddings, text.eos_token_id) == (16, 4, WordTokenizer.EOS)
    config = unet_config(model, text)
    assert (config.in_channels, config.sample_size, config.cross_attention_dim) == (3, 8, (16, 16))
    assert config.block_out_channels == (8, 16) and config.norm_num_groups == 4
    assert unet_output_shape(config) == (1, 8, 8, 3)


def test_an_accepted_flux_mapping_builds_the_model_it_describes():
    check_architecture("flux", FLUX, TEXT)
    model, text = random_model("flux", FLUX)
    config = flux_config(model, text)
    assert (config.in_channels, config.joint_attention_dim, config.pooled_projection_dim) == (12, 16, 16)
    assert config.num_layers == 1 and config.axes_dims_rope == (2, 2, 4)
    assert flux_output_shape(config) == (1, 16, 12)


def test_unet_heads_that_do_not_divide_the_channels_are_accepted_as_diffusers_builds_them():
    """8 channels over 3 heads: each head attends over 2 features, an inner width of 6 (diffusers' rule)."""
    arch = {**UNET, "num_attention_heads": 3}
    check_architecture("unet", arch, TEXT)
    model, text = random_model("unet", arch)
    assert unet_output_shape(unet_config(model, text)) == (1, 8, 8, 3)
