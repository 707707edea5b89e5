"""DanceGRPO's JPEG scoring path in JAX (slas_jax.rewards.jpeg) against PIL itself (Pillow 13.0.0 with its
bundled libjpeg-turbo 3.x): the JPEG round trip (save with ``quality=q``, 4:2:0, then ``Image.open``), PIL's
bicubic ``resize``, DanceGRPO's uint8 conversion, and the ``hps_v2`` reward's ``jpeg_quality`` option against
the float reward scoring PIL's round-tripped images.

Measured here (the numbers the asserts hold): the round trip is bit-exact, max and mean absolute difference
0 uint8 levels, on random and smooth (gradient + noise) images at 64x64 and 37x51 (qualities 75 and 30)
and 512x512 (75; 30 and 95 checked once, as were qualities 1, 10, 50, 51, 100 and sizes 1x1, 3x5, 17x2); the resize is bit-exact for
upsampling, downsampling, both pass orders and one-axis resizes; the reward option's scores equal the float
reward on PIL's files to float32 rounding (max difference printed, below 1e-6).
"""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from slas_jax.config import ConfigError
from slas_jax.models.open_clip import make_clip_model
from slas_jax.pipelines.components import FORMAT_VERSION, MARKER, STATE_DIR, save_state
from slas_jax.rewards import build_reward, jpeg
from slas_jax.rewards import hps as hps_module

# A tiny open_clip CLIP; random weights are enough to compare two scoring paths of the same model.
MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red cat", "a blue dog", "two green birds", "an astronaut"]


def pil_round_trip(levels: np.ndarray, quality: int) -> np.ndarray:
    """(h, w, 3) uint8 -> PIL ``save(..., "JPEG", quality=quality)`` then ``Image.open`` as (h, w, 3) uint8."""
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def dance_grpo_reference(images: np.ndarray, quality: int) -> np.ndarray:
    """fastvideo/train_grpo_sd.py's path on (b, h, w, 3) float32 in [0, 1]: ``(image * 255).astype(np.uint8)``,
    ``resize((512, 512))``, ``.jpg`` save / load, ToTensor -> (b, 512, 512, 3) float32."""
    out = []
    for image in images:
        pil = Image.fromarray((image * 255).astype(np.uint8)).resize((512, 512))
        out.append(pil_round_trip(np.asarray(pil), quality))
    return np.stack(out).astype(np.float32) / 255.0


def random_levels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_levels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradients and a slow wave per channel with mild noise: most blocks keep few AC coefficients."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(2 * np.pi * (x + rng.uniform()) * y)], axis=-1)
    return np.clip(255 * base + 6 * rng.standard_normal((h, w, 3)), 0, 255).round().astype(np.uint8)


def levels_difference(ours: jax.Array, theirs: np.ndarray) -> tuple[int, float]:
    difference = np.abs(np.asarray(ours).astype(np.int64) - theirs.astype(np.int64))
    return int(difference.max()), float(difference.mean())


@pytest.mark.parametrize(
    ("shape", "quality"),
    [((64, 64), 75), ((64, 64), 30), ((37, 51), 75), ((37, 51), 30), ((512, 512), 75)],
    ids=["64x64-q75", "64x64-q30", "37x51-q75", "37x51-q30", "512x512-q75"],
)
def test_round_trip_equals_pil(shape, quality):
    """A random and a smooth image in one batch; 37x51 has partial blocks, an odd chroma row and column."""
    rng = np.random.default_rng(shape[0] + quality)
    levels = np.stack([random_levels(rng, *shape), smooth_levels(rng, *shape)])
    theirs = np.stack([pil_round_trip(image, quality) for image in levels])
    ours = jax.jit(jpeg.jpeg_round_trip_levels, static_argnums=1)(jnp.asarray(levels, jnp.int32), quality)
    assert ours.shape == levels.shape and ours.dtype == jnp.int32
    for name, index in (("random", 0), ("smooth", 1)):
        largest, mean = levels_difference(ours[index], theirs[index])
        print(f"{shape} q={quality} {name}: max {largest}, mean {mean:.4f} levels")
        assert largest == 0, (name, largest, mean)


@pytest.mark.parametrize(
    "shape",
    [(64, 64), (40, 56), (1024, 768), (700, 513), (512, 300)],
    ids=["up", "up_non_square", "down_horizontal_first", "down_vertical_first", "width_only"],
)
def test_resize_equals_pil(shape):
    levels = random_levels(np.random.default_rng(shape[1]), *shape)
    theirs = np.asarray(Image.fromarray(levels).resize((512, 512)))
    ours = jax.jit(jpeg.pil_resize, static_argnums=1)(jnp.asarray(levels[None], jnp.int32), (512, 512))
    largest, mean = levels_difference(ours[0], theirs)
    print(f"{shape} -> 512x512: max {largest}, mean {mean:.4f} levels")
    assert largest == 0


def test_to_uint8_truncates_as_numpy():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    images[0, 0, :, 0] = np.arange(16, dtype=np.float32) / 255  # k / 255 * 255 may land just below k
    images[1, 0, :2, 0] = [0.0, 1.0]
    expected = (images * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(jax.jit(jpeg.to_uint8)(jnp.asarray(images))), expected)


def test_dance_grpo_path_equals_pil():
    """Float images of a size that needs the resize: the whole path, uint8 to the final float pixels."""
    rng = np.random.default_rng(3)
    images = np.stack([smooth_levels(rng, 48, 40), random_levels(rng, 48, 40)]).astype(np.float32) / 255
    images = np.clip(images + rng.uniform(0, 1 / 255, images.shape).astype(np.float32), 0, 1)
    ours = jax.jit(jpeg.dance_grpo_jpeg)(jnp.asarray(images))
    theirs = dance_grpo_reference(images, jpeg.DEFAULT_QUALITY)
    assert ours.shape == theirs.shape == (2, 512, 512, 3) and ours.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def write_tiny_hps_folder(folder) -> None:
    """A converted hps_v2 folder without torch: random tiny CLIP state, a byte-level vocabulary without
    merges (enough for lower-case prompts) and the marker."""
    folder.mkdir()
    (folder / hps_module.CONFIG_FILE).write_text(json.dumps({"model_cfg": MODEL_CFG}))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    save_state(make_clip_model(MODEL_CFG), folder / STATE_DIR)
    marker = {"format_version": FORMAT_VERSION, "reward": hps_module.KIND}
    (folder / MARKER).write_text(json.dumps(marker))


@pytest.fixture(scope="module")
def hps_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpeg") / "hps"
    write_tiny_hps_folder(folder)
    return str(folder)


def test_hps_option_scores_pil_round_trip(hps_folder):
    """``jpeg_quality`` inside one jit (no host callbacks) scores as the float reward on PIL's files."""
    plain = build_reward("hps_v2", {"checkpoint": hps_folder})
    dance = build_reward("hps_v2", {"checkpoint": hps_folder, "jpeg_quality": 75})
    batch = {k: jnp.asarray(v) for k, v in dance.prepare(PROMPTS).items()}
    rng = np.random.default_rng(5)
    images = np.stack([smooth_levels(rng, 64, 48) for _ in PROMPTS]).astype(np.float32) / 255
    images = np.clip(images + rng.uniform(0, 1 / 255, images.shape).astype(np.float32), 0, 1)

    jaxpr = str(jax.make_jaxpr(dance.fn)(dance.params, jnp.asarray(images), batch))
    assert "callback" not in jaxpr
    ours = np.asarray(jax.jit(dance.fn)(dance.params, jnp.asarray(images), batch))
    theirs = np.asarray(jax.jit(plain.fn)(plain.params, jnp.asarray(dance_grpo_reference(images, 75)), batch))
    # The other quality, on the 512-px reference (already compiled): the option's quality is the one used.
    other = np.asarray(jax.jit(plain.fn)(plain.params, jnp.asarray(dance_grpo_reference(images, 30)), batch))
    error = float(np.abs(ours - theirs).max())
    print(
        f"max score difference {error:.2e}; quality 30 instead moves scores by {np.abs(ours - other).max():.2e}"
    )
    assert ours.shape == (len(PROMPTS),) and ours.dtype == np.float32
    assert error < 1e-6
    assert np.abs(ours - other).max() > 10 * max(error, 1e-7)
    assert nnx.to_pure_dict(dance.params).keys() == nnx.to_pure_dict(plain.params).keys()


@pytest.mark.parametrize("quality", [0, 101, True, 7.5])
def test_bad_jpeg_quality_is_refused(hps_folder, quality):
    with pytest.raises(ConfigError, match=r"config\.reward\.options\.jpeg_quality"):
        build_reward("hps_v2", {"checkpoint": hps_folder, "jpeg_quality": quality})
