"""Parity of our Flax CLIP towers with transformers' (text with and without projection, both pooling rules,
padding masks; vision with projection; the full CLIPModel), checkpoint naming variants, config checks and
published parameter counts without allocation."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file
from tiny_checkpoints import perturbed

from slas_jax.models import clip, conversion
from slas_jax.models.conversion import ConversionError

pytestmark = pytest.mark.parity

VOCAB, BOS, EOS, PAD = 100, 98, 99, 0
TEXT_CONFIGS = {
    # SD1.x-style: OpenAI activation, the legacy eos_token_id=2 rule (pool at the largest token id).
    "plain_quick_gelu": (
        transformers.CLIPTextModel,
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_act="quick_gelu",
            eos_token_id=2,
        ),
    ),
    # LAION-style: exact GELU, pooling at the first eos_token_id, projection head.
    "projection_gelu": (
        transformers.CLIPTextModelWithProjection,
        dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=3,
            hidden_act="gelu",
            eos_token_id=EOS,
        ),
    ),
}
VISION_CONFIGS = {
    "quick_gelu_p8": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    ),
    "gelu_p6": dict(
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        image_size=24,
        patch_size=6,
        hidden_act="gelu",
    ),
}


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every parameter perturbed (LayerNorm scales away from 1, biases away from 0)."""
    torch.manual_seed(seed)
    return perturbed(model)


def check_close(name: str, got: jax.Array, want: torch.Tensor | np.ndarray) -> float:
    """Asserts max |got - want| < 1e-4 x max(1, max |want|) and returns the error."""
    want = np.asarray(want)
    err = float(np.abs(np.asarray(got) - want).max())
    tol = 1e-4 * max(1.0, float(np.abs(want).max()))
    assert err < tol, f"{name}: max abs error {err:.3g} >= {tol:.3g}"
    print(f"{name}: max abs error {err:.3g} (tolerance {tol:.3g})")
    return err


def token_batch() -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) (3, 12): BOS, random ids, EOS at 5 / 11 / 7, PAD after the EOS of row 2;
    a second EOS in row 0 checks that the first one is pooled."""
    ids = np.random.default_rng(0).integers(1, 97, (3, 12))
    ids[:, 0] = BOS
    eos = np.array([5, 11, 7])
    ids[np.arange(3), eos] = EOS
    ids[0, 9] = EOS
    ids[2, 8:] = PAD
    mask = (np.arange(12)[None] <= np.where(np.arange(3) == 2, 7, 11)[:, None]).astype(np.int64)
    return ids, mask


@pytest.fixture(scope="module", params=sorted(TEXT_CONFIGS))
def text_pair(request, tmp_path_factory):
    name = request.param
    cls, sizes = TEXT_CONFIGS[name]
    config = transformers.CLIPTextConfig(
        vocab_size=VOCAB,
        max_position_embeddings=16,
        projection_dim=24,
        bos_token_id=BOS,
        pad_token_id=PAD,
        **sizes,
    )
    reference = randomised(cls(config), seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    return name, reference, clip.load_clip_text(folder), folder


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "padding_mask"])
def test_text_matches_transformers(text_pair, masked):
    name, reference, ours = text_pair[:3]
    ids, mask = token_batch()
    with torch.no_grad():
        want = reference(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask) if masked else None
        )
    got = nnx.jit(lambda m, i, a: m(i, a))(ours, ids, mask if masked else None)
    check_close(f"clip text {name} last_hidden_state", got.last_hidden_state, want.last_hidden_state)
    if ours.text_projection is None:
        assert got.text_embeds is None
        check_close(f"clip text {name} pooled", got.pooler_output, want.pooler_output)
    else:
        check_close(f"clip text {name} text_embeds", got.text_embeds, want.text_embeds)
    # The pooling rule picked the position the config asks for (first EOS, or largest id for eos_token_id=2).
    eos = np.argmax(ids, -1) if ours.config.eos_token_id == 2 else np.argmax(ids == EOS, -1)
    np.testing.assert_array_equal(got.pooler_output, np.asarray(got.last_hidden_state)[np.arange(3), eos])


def test_stable_diffusion_text_encoder_names_convert(text_pair):
    """SD text_encoder folders (and transformers 4 saves) prefix `text_model.` and carry a position_ids buffer."""
    _, _, ours, folder = text_pair
    tensors = {
        (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
        for k, v in load_file(folder / "model.safetensors").items()
    }
    tensors["text_model.embeddings.position_ids"] = np.arange(16)[None]
    old = conversion.load_module(
        lambda: clip.CLIPTextModel(ours.config, rngs=nnx.Rngs(0)),
        tensors,
        clip.TEXT_CONVERSION_RULES,
        ignore=clip.IGNORED,
    )
    for a, b in zip(jax.tree.leaves(nnx.state(old)), jax.tree.leaves(nnx.state(ours)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module", params=sorted(VISION_CONFIGS))
def vision_pair(request, tmp_path_factory):
    name = request.param
    config = transformers.CLIPVisionConfig(projection_dim=24, **VISION_CONFIGS[name])
    reference = randomised(transformers.CLIPVisionModelWithProjection(config), seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    return name, reference, clip.load_clip_vision(folder)


def test_vision_matches_transformers(vision_pair):
    name, reference, ours = vision_pair
    size = VISION_CONFIGS[name]["image_size"]
    images = np.random.default_rng(1).standard_normal((2, size, size, 3), dtype=np.float32)
    with torch.no_grad():
        want = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    got = nnx.jit(lambda m, x: m(x))(ours, images)
    check_close(f"clip vision {name} last_hidden_state", got.last_hidden_state, want.last_hidden_state)
    check_close(f"clip vision {name} image_embeds", got.image_embeds, want.image_embeds)


def test_clip_model_scores_match_transformers(tmp_path):
    text_sizes = TEXT_CONFIGS["projection_gelu"][1]
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=BOS, pad_token_id=PAD, **text_sizes
        ),
        vision_config=VISION_CONFIGS["gelu_p6"],
        projection_dim=20,
    )
    reference = randomised(transformers.CLIPModel(config), seed=3)
    reference.save_pretrained(tmp_path)
    ours = clip.load_clip_model(tmp_path)
    ids, mask = token_batch()
    images = np.random.default_rng(2).standard_normal((2, 24, 24, 3), dtype=np.float32)
    with torch.no_grad():
        want = reference(
            input_ids=torch.from_numpy(ids),
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
            attention_mask=torch.from_numpy(mask),
        )
    got = nnx.jit(lambda m, i, x, a: (m(i, x, a), m.get_text_features(i, a), m.get_image_features(x)))(
        ours, ids, images, mask
    )
    logits, text, image = got
    check_close("clip model logits_per_image", logits, want.logits_per_image)
    check_close(
        "clip model text_embeds", text / np.linalg.norm(text, axis=-1, keepdims=True), want.text_embeds
    )
    check_close(
        "clip model image_embeds", image / np.linalg.norm(image, axis=-1, keepdims=True), want.image_embeds
    )


def param_count(make) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(make), nnx.Param)))


def test_sd14_text_encoder_parameter_count_matches_transformers_without_allocating():
    with torch.device("meta"):
        reference = transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
            )
        )
    want = sum(p.numel() for p in reference.parameters())
    assert (
        param_count(lambda: clip.CLIPTextModel(clip.CLIPTextConfig.sd14(), rngs=nnx.Rngs(0)))
        == want
        == 123_060_480
    )


def test_vit_l14_vision_parameter_count_matches_transformers_without_allocating():
    with torch.device("meta"):
        reference = transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=14,
                projection_dim=768,
            )
        )
    want = sum(p.numel() for p in reference.parameters())
    assert (
        param_count(
            lambda: clip.CLIPVisionModelWithProjection(clip.CLIPVisionConfig.vit_l14(), rngs=nnx.Rngs(0))
        )
        == want
    )


def test_config_reads_transformers_keys_and_refuses_unsupported_settings():
    config = clip.CLIPTextConfig.from_dict(
        {
            "architectures": ["CLIPTextModelWithProjection"],
            "hidden_size": 64,
            "num_attention_heads": 4,
            "eos_token_id": 49407,
        }
    )
    assert (config.with_projection, config.hidden_size, config.eos_token_id) == (True, 64, 49407)
    with pytest.raises(ConversionError, match="hidden_act"):
        clip.CLIPTextConfig.from_dict({"hidden_act": "relu"})
    with pytest.raises(ConversionError, match="eos_token_id"):
        clip.CLIPTextConfig.from_dict({"eos_token_id": [49407, 49408]})
    with pytest.raises(ConversionError, match="patch_size"):
        clip.CLIPVisionConfig.from_dict({"image_size": 224, "patch_size": 15})
