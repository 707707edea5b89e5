"""Parity of our Flax T5 encoder with transformers' T5EncoderModel on tiny random configs, the relative
position buckets, conversion and config checks, and the T5-XXL parameter count without allocating."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import save_file
from tiny_checkpoints import perturbed

from slas_jax.models import conversion, t5
from slas_jax.models.conversion import ConversionError

pytestmark = pytest.mark.parity

# Two tiny encoders: v1.1-style (gated GELU, heads x d_kv == d_model) and original-T5-style (ReLU, heads x
# d_kv != d_model). Few buckets and a short max_distance so that the test sequences (12 tokens) reach the
# logarithmic buckets and the clamp at max_distance.
TINY_CONFIGS = {
    "gated_gelu": dict(
        vocab_size=50,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=6,
        feed_forward_proj="gated-gelu",
    ),
    "relu": dict(
        vocab_size=40,
        d_model=24,
        d_kv=6,
        d_ff=40,
        num_layers=2,
        num_heads=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=10,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-5,
    ),
}

# text_encoder_2/config.json of black-forest-labs/FLUX.1-dev, as published.
FLUX_T5_CONFIG_JSON = {
    "architectures": ["T5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.3",
    "use_cache": True,
    "vocab_size": 32128,
}


def randomised_t5(config: dict, seed: int) -> transformers.T5EncoderModel:
    """A transformers T5 encoder whose every parameter is perturbed (norm scales start at 1): a swapped or
    skipped tensor cannot pass the parity check."""
    torch.manual_seed(seed)
    return perturbed(transformers.T5EncoderModel(transformers.T5Config(dropout_rate=0.0, **config)))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def t5_pair(request, tmp_path_factory):
    """(name, torch reference, its save_pretrained folder, our model loaded from it)."""
    name = request.param
    reference = randomised_t5(TINY_CONFIGS[name], seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    return name, reference, folder, t5.load_t5_encoder(folder)


def max_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs difference, tolerance 1e-4 x max(1, max |want|))."""
    return float(np.abs(got - want).max()), 1e-4 * max(1.0, float(np.abs(want).max()))


def test_t5_matches_transformers(t5_pair):
    name, reference, _, ours = t5_pair
    rng = np.random.default_rng(0)
    input_ids = rng.integers(0, TINY_CONFIGS[name]["vocab_size"], (2, 12)).astype(np.int32)
    mask = np.ones((2, 12), np.int32)
    mask[1, 8:] = 0  # the second prompt is padded: padding keys must be masked out
    forward = nnx.jit(lambda m, ids, mask: m(ids, mask))
    for attention_mask in (mask, None):
        with torch.no_grad():
            want = reference(
                input_ids=torch.from_numpy(input_ids).long(),
                attention_mask=None if attention_mask is None else torch.from_numpy(attention_mask),
            ).last_hidden_state.numpy()
        got = np.asarray(forward(ours, input_ids, attention_mask))
        err, tol = max_error(got, want)
        label = f"{name}, {'padded' if attention_mask is not None else 'no mask'}"
        assert err < tol, f"t5 {label}: max abs error {err:.3g} >= {tol:.3g}"
        print(f"t5 {label}: max abs error {err:.3g} (tolerance {tol:.3g})")


def test_relative_position_buckets_match_transformers():
    query, key = np.meshgrid(np.arange(300), np.arange(300), indexing="ij")
    for buckets, distance in ((32, 128), (8, 6)):
        want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            torch.from_numpy(key - query), bidirectional=True, num_buckets=buckets, max_distance=distance
        ).numpy()
        got = t5.relative_position_buckets(300, 300, num_buckets=buckets, max_distance=distance)
        np.testing.assert_array_equal(got, want)


def test_blocks_are_one_scanned_stack():
    config = t5.T5Config(**TINY_CONFIGS["gated_gelu"])
    model = nnx.eval_shape(lambda: t5.T5EncoderModel(config, rngs=nnx.Rngs(0)))
    wi_0 = model.encoder.block.layer[1].DenseReluDense.wi_0.kernel
    assert wi_0.shape == (3, 32, 48)
    assert wi_0.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    jaxpr = str(jax.make_jaxpr(lambda m: m(np.zeros((1, 5), np.int32)))(model))
    assert jaxpr.count("scan[") == 1  # one block body, not one per layer


def test_remat_keeps_values_and_gradients():
    ids = np.arange(10, dtype=np.int32).reshape(2, 5)

    def loss_and_grad(remat: bool):
        config = t5.T5Config(**TINY_CONFIGS["relu"], remat=remat)
        model = t5.T5EncoderModel(config, rngs=nnx.Rngs(3))
        loss = lambda m: (m(ids) ** 2).mean()  # noqa: E731
        jaxpr = str(jax.make_jaxpr(nnx.grad(loss))(model))
        return nnx.jit(nnx.value_and_grad(loss))(model), jaxpr

    ((loss_a, grad_a), jaxpr_a), ((loss_b, grad_b), jaxpr_b) = loss_and_grad(False), loss_and_grad(True)
    assert "remat" not in jaxpr_a and "remat" in jaxpr_b
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_tied_embedding_under_either_name_loads(t5_pair, tmp_path):
    _, _, folder, ours = t5_pair
    tensors = dict(conversion.read_weights(folder))
    embedding = tensors["shared.weight"]
    without_shared = {k: v for k, v in tensors.items() if k != "shared.weight"}
    variants = {
        "both": {**tensors, "encoder.embed_tokens.weight": embedding},
        "encoder_only": {**without_shared, "encoder.embed_tokens.weight": embedding},
    }
    ids = np.arange(6, dtype=np.int32)[None]
    want = np.asarray(ours(ids))
    for variant, variant_tensors in variants.items():
        (tmp_path / variant).mkdir()
        (tmp_path / variant / "config.json").write_text((folder / "config.json").read_text())
        save_file(
            {k: np.ascontiguousarray(v) for k, v in variant_tensors.items()},
            tmp_path / variant / "model.safetensors",
        )
        np.testing.assert_array_equal(np.asarray(t5.load_t5_encoder(tmp_path / variant)(ids)), want)


def _convert(tensors, config: t5.T5Config):
    abstract = nnx.state(nnx.eval_shape(lambda: t5.T5EncoderModel(config, rngs=nnx.Rngs(0))))
    return conversion.convert_tensors(tensors, t5.CONVERSION_RULES, abstract, ignore=t5.IGNORED)


def test_conversion_errors_name_the_tensor(t5_pair):
    name, _, folder, _ = t5_pair
    config = t5.T5Config(**TINY_CONFIGS[name])
    tensors = dict(conversion.read_weights(folder))
    _convert(tensors, config)  # the unmodified checkpoint converts

    extra = {**tensors, "encoder.block.0.layer.0.SelfAttention.extra.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(ConversionError, match=r"SelfAttention\.extra"):
        _convert(extra, config)

    last = config.num_layers - 1
    missing = {k: v for k, v in tensors.items() if not k.startswith(f"encoder.block.{last}.")}
    with pytest.raises(ConversionError, match=rf"missing layers \[{last}\]"):
        _convert(missing, config)

    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    wrong = {**tensors, key: np.zeros((3, 5), np.float32)}
    with pytest.raises(ConversionError, match=rf"{key}.*shape \(5, 3\)"):
        _convert(wrong, config)


def test_flux_t5_config_json_is_the_xxl_preset():
    assert t5.T5Config.from_dict(FLUX_T5_CONFIG_JSON) == t5.T5Config.t5_v1_1_xxl()


def test_t5_v1_1_xxl_parameter_count_matches_transformers_without_allocating():
    with torch.device("meta"):
        reference = transformers.T5EncoderModel(transformers.T5Config(**FLUX_T5_CONFIG_JSON))
    want = sum(p.numel() for p in reference.parameters())  # `shared` and `embed_tokens` are one tensor
    abstract = nnx.eval_shape(lambda: t5.T5EncoderModel(t5.T5Config.t5_v1_1_xxl(), rngs=nnx.Rngs(0)))
    got = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert got == want == 4_762_310_656


@pytest.mark.parametrize(
    ("key", "value"), [("feed_forward_proj", "gated-silu"), ("model_type", "umt5"), ("is_decoder", True)]
)
def test_unsupported_config_is_refused_by_name(key, value):
    with pytest.raises(ConversionError, match=key):
        t5.T5Config.from_dict({**TINY_CONFIGS["relu"], key: value})
