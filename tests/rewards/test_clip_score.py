"""CLIP-family rewards (PickScore, CLIP score) against transformers' CLIPModel on CLIPProcessor outputs, the JAX
image preprocessing against CLIPImageProcessor, and the one-line errors for incomplete folders."""

import json
import string

import jax
import numpy as np
import pytest
import torch
import transformers
from sample_images import make_images

from slas_jax.config import ConfigError
from slas_jax.models.conversion import ConversionError
from slas_jax.rewards import REWARDS, build_reward
from slas_jax.rewards.clip_score import TOKENS_KEY, CLIPImageProcessing

pytestmark = pytest.mark.parity

PROMPTS = ["a cat", "a dog on a mat", "the red cat sat", "a dog"]
MAX_LENGTH = 16
CROP = 16
# Downsampling from RESIZE_SHAPE exercises the resize (40 -> 16 on the short side, 48 -> int(16 * 48 / 40) = 19
# on the long one) and an off-centre crop (offset 1).
RESIZE_SHAPE = (48, 40)
# On the resize path the worst pixel difference measured 0.014 in normalised units (mean 0.004): PIL resizes
# 8-bit images and rounds after each pass where we stay in float; one grey level is 1 / 255 / std ~ 0.015.
RESIZE_PIXEL_ATOL = 0.03


def write_clip_tokenizer(folder) -> None:
    """A tiny CLIP BPE vocabulary: letters, letters at word ends, a few merged words; the special tokens take
    the largest ids, as in CLIP's vocabulary (so either pooling rule finds the end-of-text token)."""
    letters = string.ascii_lowercase
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("m", "a"), ("ma", "t</w>")]
    words = [a + b for a, b in merges]
    vocab = [*letters, *(c + "</w>" for c in letters), *words, "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny transformers CLIPModel (LAION-style gelu, PickScore-like logit scale) with its tokenizer files and
    a CLIPImageProcessor config (shortest edge = crop, as PickScore's 224 / 224), saved to a folder."""
    folder = tmp_path_factory.mktemp("tiny_pickscore")
    write_clip_tokenizer(folder)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder))
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_LENGTH,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=CROP,
            patch_size=4,
            hidden_act="gelu",
        ),
        projection_dim=16,
        logit_scale_init_value=4.6052,  # log(100), PickScore_v1's learned value
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(clip_folder):
    """transformers' CLIPModel and CLIPProcessor loaded back from the folder."""
    model = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    return model, transformers.CLIPProcessor.from_pretrained(clip_folder)


def reference_scores(reference, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PickScore, inputs): the diagonal of logits_per_text, i.e. exp(logit_scale) * cosine of prompt i and
    image i, as PickScore's repository computes it (processor with padding + truncation)."""
    model, processor = reference
    inputs = processor(
        text=PROMPTS,
        images=list(images),
        padding=True,
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_text.numpy()
    return np.diag(logits), inputs


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.fixture(scope="module")
def rewards(clip_folder):
    return {
        name: build_reward(name, {"checkpoint": str(clip_folder)}) for name in ("pickscore", "clip_score")
    }


def score(reward, images: np.ndarray) -> np.ndarray:
    batch = {k: jax.numpy.asarray(v) for k, v in reward.prepare(PROMPTS).items()}
    return np.asarray(jax.jit(reward.fn)(reward.params, jax.numpy.asarray(images / 255.0, np.float32), batch))


def test_both_names_are_registered():
    assert {"pickscore", "clip_score"} <= set(REWARDS)


def test_prompts_are_tokenised_as_the_processor_does(rewards, reference):
    ours = rewards["pickscore"].prepare(PROMPTS)[TOKENS_KEY]
    theirs = reference[1].tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    assert ours.dtype == np.int32 and ours.shape == (len(PROMPTS), MAX_LENGTH)
    np.testing.assert_array_equal(ours, np.asarray(theirs["input_ids"]))


def test_preprocessing_matches_clip_image_processor(clip_folder, reference):
    processing = CLIPImageProcessing.from_file(clip_folder / "preprocessor_config.json")
    processor = reference[1].image_processor
    at_crop = make_images((CROP, CROP), 3, seed=1)
    theirs = processor(images=list(at_crop), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    ours = np.asarray(processing(at_crop / 255.0))
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)

    large = make_images(RESIZE_SHAPE, 3, seed=2)
    theirs = processor(images=list(large), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    ours = np.asarray(processing(large / 255.0))
    assert ours.shape == theirs.shape == (3, CROP, CROP, 3)
    error = np.max(np.abs(ours - theirs))
    assert error < RESIZE_PIXEL_ATOL, f"bicubic resize differs from PIL's by {error:.4f} (normalised units)"


def test_old_style_processor_configs_are_read(tmp_path):
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's preprocessor_config.json writes sizes as ints.
    path = tmp_path / "preprocessor_config.json"
    path.write_text(
        json.dumps(
            {"size": 224, "crop_size": 224, "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
        )
    )
    processing = CLIPImageProcessing.from_file(path)
    assert (processing.shortest_edge, processing.crop, processing.method) == (224, (224, 224), "cubic")
    assert processing.resized_shape(512, 768) == (224, 336)
    assert processing(np.ones((1, 512, 768, 3), np.float32)).shape == (1, 224, 224, 3)
    path.write_text(json.dumps({"resample": 0}))
    with pytest.raises(ConversionError, match="resample=0 is not supported"):
        CLIPImageProcessing.from_file(path)


@pytest.mark.parametrize("name", ["pickscore", "clip_score"])
def test_reward_equals_transformers_on_processor_outputs(name, rewards, reference):
    images = make_images((CROP, CROP), len(PROMPTS), seed=3)
    theirs, _ = reference_scores(reference, images)
    if name == "clip_score":
        theirs = theirs / reference[0].logit_scale.exp().item()
    ours = score(rewards[name], images)
    assert ours.shape == (len(PROMPTS),) and ours.dtype == np.float32
    error = relative_error(ours, theirs)
    assert error < 1e-4, f"{name}: relative error {error:.2e} (ours {ours}, transformers {theirs})"


def test_reward_through_the_resize_path_is_close(rewards, reference):
    images = make_images(RESIZE_SHAPE, len(PROMPTS), seed=4)
    theirs, _ = reference_scores(reference, images)
    ours = score(rewards["pickscore"], images)
    # Pixel differences of about one grey level move this tiny random CLIP's score by 1.7e-3 (measured).
    error = relative_error(ours, theirs)
    assert error < 5e-3, f"relative error {error:.2e} (ours {ours}, transformers {theirs})"


def test_incomplete_folders_fail_with_one_line(tmp_path, clip_folder):
    with pytest.raises(ConversionError) as missing:
        build_reward("pickscore", {"checkpoint": str(tmp_path / "PickScore_v1")})
    message = str(missing.value)
    assert "\n" not in message and "PickScore_v1" in message and "preprocessor_config.json" in message
    assert "yuvalkirstain/PickScore_v1" in message and "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((clip_folder / "config.json").read_text())
    with pytest.raises(ConversionError, match=r"lacks preprocessor_config.json, \*.safetensors, vocab.json"):
        build_reward("clip_score", {"checkpoint": str(partial)})

    with pytest.raises(
        ConfigError, match=r"config\.reward\.options\.checkpoint: set it to a transformers CLIPModel"
    ):
        build_reward("pickscore", {})
    with pytest.raises(ConfigError, match=r"config\.reward\.options\.dtype: must be 'float32' or 'bfloat16'"):
        build_reward("pickscore", {"checkpoint": str(clip_folder), "dtype": "float16"})
