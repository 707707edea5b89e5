"""HPS-v2.1 ("hps_v2") against open_clip and HPSv2's scoring path on a tiny random open_clip CLIP written in
the published file formats: tokens equal open_clip's, preprocessing equals HPSv2's evaluation transform,
scores equal ``diag(image_features @ text_features.T)``; the converter's HPS layout, a converted folder that
scores without torch, the one-line errors, and ViT-H-14's parameter count without allocating it.

The references come from ``build/hps_reference`` (open_clip_torch 3.3.0, hpsv2 1.2.0 and torchvision
0.28.0, installed there without their dependencies, see .ci/run): torchvision's only wheel reachable here is
the CUDA build, whose C++ ops cannot load against the CPU torch, and which would break transformers' image
processors if installed for the whole suite; its Python transforms, all the references use, need no ops.
hpsv2's package ``__init__`` needs clint and its download code, so the test imports hpsv2's scoring modules
(``transform``, ``tokenizer``, ``model``) without it; its wheel lacks the tokenizer's vocabulary file, which
is open_clip's byte for byte (checked), so the fixture copies it there.
"""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from cli_runner import ROOT, run_module
from flax import nnx
from PIL import Image
from sample_images import make_images
from tiny_checkpoints import perturbed

from slas_jax import convert as convert_cli
from slas_jax.config import ConfigError
from slas_jax.models import open_clip as our_open_clip
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines.components import MARKER
from slas_jax.rewards import REWARDS, build_reward
from slas_jax.rewards.hps import HPS_WEIGHTS, HPSImageProcessing
from slas_jax.rewards.hps import TOKENS_KEY as HPS_TOKENS

pytestmark = pytest.mark.parity

REFERENCE_LIBS = ROOT / "build" / "hps_reference"
INSTALL = (
    "python -m pip install --no-deps --target build/hps_reference torchvision==0.28.0 open_clip_torch==3.3.0 "
    "hpsv2==1.2.0"
)
# sha256 of OpenAI's BPE vocabulary, in open_clip's package and in HPSv2's repository alike.
HPS_VOCABULARY_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
IMAGE_SIZE = 24
MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = [
    "a photo of a cat",
    "Tom &amp; Jerry, “curly quotes” and café crème at 12:30!",
    "an astronaut riding a horse on the moon, highly detailed digital art",
    " ".join(["a very long prompt about a red cat on a mat"] * 12),  # far over 77 tokens
]
# Square, both non-square orientations (odd padding), upsampling, and a size that needs no resize.
IMAGE_SHAPES = [(48, 48), (40, 56), (56, 41), (16, 20), (24, 24)]


@pytest.fixture(scope="module")
def refs() -> types.SimpleNamespace:
    """open_clip and hpsv2's transform / tokenizer / model modules, imported from build/hps_reference;
    afterwards that folder and torchvision leave sys.path / sys.modules again, so that the rest of the suite
    does not see torchvision."""
    if not (REFERENCE_LIBS / "open_clip").is_dir():
        pytest.fail(f"the HPS reference libraries are missing; install them with: {INSTALL}")
    vocabulary = "open_clip/bpe_simple_vocab_16e6.txt.gz"
    hps_vocabulary = REFERENCE_LIBS / "hpsv2/src" / vocabulary
    if not hps_vocabulary.is_file():
        shutil.copyfile(REFERENCE_LIBS / vocabulary, hps_vocabulary)
    assert hashlib.sha256(hps_vocabulary.read_bytes()).hexdigest() == HPS_VOCABULARY_SHA256
    # transformers decides once whether torchvision exists (diffusers at import): ask it before it does here.
    transformers.utils.import_utils.is_torchvision_available()
    sys.path.insert(0, str(REFERENCE_LIBS))
    # torchvision registers fake kernels for these two ops of its C++ extension, which cannot load here.
    for op in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, op):
            torch.library.define(
                f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
    try:
        open_clip = importlib.import_module("open_clip")
        # hpsv2's packages without their __init__ modules (which import its training and download code).
        for name in ("hpsv2", "hpsv2.src", "hpsv2.src.open_clip"):
            package = types.ModuleType(name)
            package.__path__ = [str(REFERENCE_LIBS / name.replace(".", "/"))]
            sys.modules.setdefault(name, package)
        hps = {
            m: importlib.import_module(f"hpsv2.src.open_clip.{m}")
            for m in ("transform", "tokenizer", "model")
        }
        yield types.SimpleNamespace(open_clip=open_clip, **hps)
    finally:
        sys.path.remove(str(REFERENCE_LIBS))
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]


def write_tokenizer_files(folder: Path, open_clip) -> None:
    """vocab.json + merges.txt as Hugging Face CLIP repositories publish them, from open_clip's own BPE data
    (the special tokens under Hugging Face's names)."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): i for token, i in tokenizer.encoder.items()}
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def write_source(folder: Path, open_clip, base: torch.nn.Module, hps: dict, base_format: str) -> Path:
    """An HPS source folder: the laion repository's files (config, tokenizer, base weights in
    ``base_format``) and HPSv2's ``{"state_dict": ...}``."""
    folder.mkdir(parents=True)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    write_tokenizer_files(folder, open_clip)
    if base_format == "safetensors":
        safetensors.torch.save_file(base.state_dict(), folder / "open_clip_model.safetensors")
    else:
        torch.save(base.state_dict(), folder / "open_clip_pytorch_model.bin")
    torch.save({"state_dict": hps, "epoch": 1}, folder / HPS_WEIGHTS)
    return folder


@pytest.fixture(scope="module")
def models(refs):
    """(base, hps): tiny CLIPs of open_clip (the base, as laion publishes it) and of hpsv2's open_clip (the
    HPS model that scores), perturbed differently: the HPS weights must win."""
    torch.manual_seed(0)
    base = perturbed(refs.open_clip.CLIP(**MODEL_CFG, output_dict=True), 0.05)
    hps = perturbed(refs.model.CLIP(**MODEL_CFG, output_dict=True), 0.05)
    return base, hps


@pytest.fixture(scope="module")
def converted(refs, models, tmp_path_factory) -> Path:
    """The safetensors-based source folder converted by ``python -m slas_jax.convert``."""
    base, hps = models
    root = tmp_path_factory.mktemp("hps")
    source = write_source(root / "src", refs.open_clip, base, hps.state_dict(), "safetensors")
    result = run_module("slas_jax.convert", source, root / "out", env={"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"converted into {root / 'out'}" in result.stdout
    return root / "out"


@pytest.fixture(scope="module")
def reward(converted):
    return build_reward("hps_v2", {"checkpoint": str(converted)})


def reference_pixels(transform, images: np.ndarray) -> torch.Tensor:
    """HPSv2's preprocess_val (image_transform(size, is_train=False, resize_longest_max=True)) on PIL images,
    stacked (n, 3, size, size)."""
    preprocess = transform.image_transform(IMAGE_SIZE, is_train=False, resize_longest_max=True)
    return torch.stack([preprocess(Image.fromarray(image)) for image in images])


def reference_scores(refs, hps_model, images: np.ndarray) -> np.ndarray:
    """HPSv2's img_score.py: diag(image_features @ text_features.T) of the normalised features."""
    with torch.no_grad():
        outputs = hps_model(reference_pixels(refs.transform, images), refs.tokenizer.tokenize(PROMPTS))
        logits = outputs["image_features"] @ outputs["text_features"].T
    return torch.diagonal(logits).numpy()


def our_scores(reward, images: np.ndarray) -> np.ndarray:
    batch = {k: jax.numpy.asarray(v) for k, v in reward.prepare(PROMPTS).items()}
    return np.asarray(jax.jit(reward.fn)(reward.params, jax.numpy.asarray(images / 255.0, np.float32), batch))


def test_registered():
    assert "hps_v2" in REWARDS


def test_tokens_equal_hpsv2_and_open_clip(refs, reward):
    ours = reward.prepare(PROMPTS)[HPS_TOKENS]
    assert ours.dtype == np.int32 and ours.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ours, refs.tokenizer.tokenize(PROMPTS).numpy())
    np.testing.assert_array_equal(ours, refs.open_clip.tokenize(PROMPTS).numpy())
    assert ours[0, 0] == 49406 and ours[-1, 76] == 49407 and ours[0, -1] == 0  # start, cut end, zero padding


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=[f"{h}x{w}" for h, w in IMAGE_SHAPES])
def test_preprocessing_equals_hpsv2_transform(refs, shape):
    images = make_images(shape, 2, seed=shape[0] + shape[1])
    theirs = reference_pixels(refs.transform, images).permute(0, 2, 3, 1).numpy()
    ours = np.asarray(jax.jit(HPSImageProcessing(size=IMAGE_SIZE))(images / 255.0))
    assert ours.shape == theirs.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    error = float(np.abs(ours - theirs).max())
    print(f"{shape}: max preprocessing error {error:.2e} (normalised units)")
    assert error < 1e-5


@pytest.mark.parametrize("shape", [(48, 48), (40, 56)], ids=["square", "non_square"])
def test_scores_equal_hpsv2(refs, models, reward, shape):
    images = make_images(shape, len(PROMPTS), seed=7)
    theirs = reference_scores(refs, models[1], images)
    ours = our_scores(reward, images)
    assert ours.shape == (len(PROMPTS),) and ours.dtype == np.float32
    error = float(np.abs(ours - theirs).max())
    print(f"{shape}: max score error {error:.2e} (scores {theirs})")
    assert error < 1e-4


def test_bin_base_and_hps_overlay(refs, models, tmp_path):
    """A .bin base folder converts in-process to the same model; a tensor the HPS state dict lacks comes
    from the base weights (HPSv2 loads its state dict over the pretrained model)."""
    base, hps = models
    partial = {k: v for k, v in hps.state_dict().items() if k != "logit_scale"}
    source = write_source(tmp_path / "src", refs.open_clip, base, partial, "bin")
    marker = convert_cli.convert_hps(source, tmp_path / "out", log=lambda _: None)
    assert marker["weights"] == ["open_clip_pytorch_model.bin", HPS_WEIGHTS]
    assert json.loads((tmp_path / "out" / MARKER).read_text()) == marker
    ours = build_reward("hps_v2", {"checkpoint": str(tmp_path / "out")})
    params = nnx.to_pure_dict(ours.params)
    np.testing.assert_array_equal(params["logit_scale"], base.logit_scale.detach().numpy())
    np.testing.assert_array_equal(params["visual_projection"]["kernel"], hps.visual.proj.detach().numpy())


def test_converted_folder_scores_without_torch(converted, reward):
    """Building the reward from a converted folder and scoring imports no torch and reads no safetensors."""
    images = make_images((40, 56), len(PROMPTS), seed=7)
    np.save(converted.parent / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys
        import jax
        import numpy as np
        from slas_jax.models import conversion

        def refuse(*args, **kwargs):
            raise AssertionError("safetensors read while loading a converted folder")

        conversion.read_weights = conversion.read_safetensors = refuse
        from slas_jax.rewards import build_reward

        reward = build_reward("hps_v2", {{"checkpoint": {str(converted)!r}}})
        batch = {{k: jax.numpy.asarray(v) for k, v in reward.prepare({PROMPTS!r}).items()}}
        images = np.load({str(converted.parent / "images.npy")!r}) / 255.0
        scores = jax.jit(reward.fn)(reward.params, jax.numpy.asarray(images, np.float32), batch)
        np.save({str(converted.parent / "scores.npy")!r}, np.asarray(scores))
        loaded = sorted(m for m in ("torch", "torchvision", "open_clip") if m in sys.modules)
        print("heavy modules:", loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "heavy modules: []" in out.stdout
    np.testing.assert_allclose(
        np.load(converted.parent / "scores.npy"), our_scores(reward, images), atol=1e-6
    )


def test_vit_h14_parameter_count_matches_open_clip(refs):
    """Our CLIPModel built from ViT-H-14's open_clip config has open_clip's and hpsv2's parameter count
    (986,109,441), counted without allocating: nnx.eval_shape here, the meta device there."""
    config = refs.open_clip.get_model_config("ViT-H-14")
    hps_config = json.loads((REFERENCE_LIBS / "hpsv2/src/open_clip/model_configs/ViT-H-14.json").read_text())
    assert hps_config == config
    with torch.device("meta"):
        theirs = [sum(p.numel() for p in m.CLIP(**config).parameters()) for m in (refs.open_clip, refs.model)]
    abstract = nnx.eval_shape(lambda: our_open_clip.make_clip_model(config))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert [ours, ours] == theirs and ours == 986_109_441


def test_unsupported_open_clip_settings_are_refused():
    with pytest.raises(ConversionError, match=r"text_cfg: setting 'hf_model_name'|text_cfg: hf_model_name="):
        our_open_clip.clip_configs({**MODEL_CFG, "text_cfg": {**MODEL_CFG["text_cfg"], "hf_model_name": "x"}})
    with pytest.raises(ConversionError, match=r"vision_cfg: setting 'frobnicate' is not supported"):
        our_open_clip.clip_configs({**MODEL_CFG, "vision_cfg": {**MODEL_CFG["vision_cfg"], "frobnicate": 1}})
    with pytest.raises(ConversionError, match=r"a ResNet tower"):
        our_open_clip.clip_configs({**MODEL_CFG, "vision_cfg": {"layers": [3, 4, 6, 3], "width": 64}})


def test_missing_or_unconverted_folders_fail_with_one_line(tmp_path, converted):
    published = (
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "xswu/HPSv2",
        "HPS_v2.1_compressed.pt",
        "vocab.json",
    )
    with pytest.raises(ConversionError) as missing:
        build_reward("hps_v2", {"checkpoint": str(tmp_path / "HPS_v2.1")})
    message = str(missing.value)
    assert "\n" not in message and str(tmp_path / "HPS_v2.1") in message
    assert all(
        part in message for part in (*published, "open_clip_pytorch_model.bin", "python -m slas_jax.convert")
    )

    unconverted = tmp_path / "unconverted"
    unconverted.mkdir()
    (unconverted / HPS_WEIGHTS).write_bytes(b"")
    with pytest.raises(ConversionError, match=rf"is not a converted folder \(no {MARKER}\)"):
        build_reward("hps_v2", {"checkpoint": str(unconverted)})
    with pytest.raises(
        ConversionError, match=r"lacks open_clip_config.json, vocab.json, merges.txt, .*xswu/HPSv2"
    ):
        convert_cli.convert_hps(unconverted, tmp_path / "out")
    with pytest.raises(
        ConfigError,
        match=r"config\.reward\.options\.checkpoint: set it to a folder converted by python -m slas_jax\.convert",
    ):
        build_reward("hps_v2", {})
    with pytest.raises(ConfigError, match=r"config\.reward\.options\.dtype: must be 'float32' or 'bfloat16'"):
        build_reward("hps_v2", {"checkpoint": str(converted), "dtype": "float16"})
