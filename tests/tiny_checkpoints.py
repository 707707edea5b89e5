"""Tiny random checkpoint folders written by the reference libraries' own ``save_pretrained``, for the tests
that load, convert or compare against them.

- :func:`save_tiny_sd`: a StableDiffusionPipeline folder with SD1.4's structure,
- :func:`save_tiny_flux`: a FluxPipeline folder with FLUX.1-dev's structure,
- :func:`save_tiny_clip_model`: a PickScore-shaped CLIPModel folder (weights, tokenizer, image processor),
- :func:`save_clip_tokenizer` / :func:`t5_tokenizer`: word-level tokenizers over a few words.

Each builder seeds torch, so a folder is the same in every run, and moves every parameter off its initial
value by ``perturb`` x standard-normal noise (:func:`perturbed`, which the single-model parity tests use too),
so that a parameter a conversion leaves at its default cannot pass a comparison. Keyword dicts named after a
component update its default config (diffusers / transformers constructor arguments), e.g.
``save_tiny_sd(folder, unet={"layers_per_block": 2})``.
"""

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import diffusers
import torch
import transformers
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

Module = TypeVar("Module", bound=torch.nn.Module)

SD_WORDS = ("a", "red", "cat", "on", "the", "mat", "dog", "in", "fog", "photo", "of")
FLUX_WORDS = ("a", "red", "cat", "on", "the", "mat", "bright", "top", "bottom", "left", "right", "centre")

# SD1.4's scheduler_config.json values (it ships PNDM with them; DDPO / DanceGRPO swap in DDIM).
SD14_DDIM = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
# FLUX.1-dev's scheduler_config.json (its "shift" 3.0 is unused: dynamic shifting is on).
FLUX1_DEV_SCHEDULER = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    shift=3.0,
    use_dynamic_shifting=True,
)


def save_clip_tokenizer(folder: Path, words: Sequence[str]) -> transformers.CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer over ``words`` (vocab.json + merges.txt + tokenizer_config.json in
    ``folder``, as SD's tokenizer folder has them): single characters, then left-to-right merges up to each
    whole word; the special tokens take the largest ids, as in CLIP's vocabulary, so that SD1.x's legacy
    pooling rule (largest id) finds the end-of-text token. Returns the tokenizer loaded from ``folder``."""
    chars = sorted({c for w in words for c in w})
    vocab = {**{c: 0 for c in chars}, **{c + "</w>": 0 for c in chars}}
    merges = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab[parts[0]] = 0
    vocab.update({"<|startoftext|>": 0, "<|endoftext|>": 0})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def t5_tokenizer(words: Sequence[str]) -> transformers.T5TokenizerFast:
    """A Unigram (SentencePiece-style) T5 tokenizer over ``words``: pad 0, eos 1, unk 2, whole words, then
    single characters as a fallback; a pipeline saves it as tokenizer.json."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in words]
    pieces += [(c, -5.0) for c in sorted({c for w in words for c in w})]
    return transformers.T5TokenizerFast(vocab=pieces, extra_ids=0)


def perturbed(model: Module, scale: float = 0.1) -> Module:
    """``model`` in eval mode with ``scale`` x standard-normal noise added to every parameter (torch's global
    generator), so that norm scales (init 1) and biases (init 0) differ from each other and from their
    defaults: a swapped or skipped tensor cannot pass a parity check."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def _clip_text_encoder(
    tokenizer: transformers.CLIPTokenizer, overrides: Mapping[str, Any]
) -> transformers.CLIPTextModel:
    """A 16-wide OpenAI-style CLIP text encoder over ``tokenizer``'s vocabulary, pooling at the largest id."""
    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=2,  # SD1.4's / CLIP-L's legacy value: pool at the largest id, the end-of-text token
    )
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**{**config, **overrides}))


def save_tiny_sd(
    folder: Path,
    *,
    words: Sequence[str] = SD_WORDS,
    resolution: int = 16,
    seed: int = 0,
    perturb: float = 0.1,
    text_encoder: Mapping[str, Any] | None = None,
    unet: Mapping[str, Any] | None = None,
    vae: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
) -> diffusers.StableDiffusionPipeline:
    """Saves a tiny random StableDiffusionPipeline into ``folder`` and returns it.

    SD1.4's structure: CrossAttn down / up blocks (channels 8, 16; two heads), a two-block 4-channel VAE
    (x2 downscale) with SD's scaling factor, an OpenAI-style CLIP text encoder (two layers) over
    :func:`save_clip_tokenizer` of ``words``, DDIM with SD1.4's scheduler settings, no safety checker.
    ``resolution`` (pixels) is written as the models' informational ``sample_size``.
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as source:
        tokenizer = save_clip_tokenizer(Path(source), words)
    text_model = _clip_text_encoder(tokenizer, text_encoder or {})
    unet_model = diffusers.UNet2DConditionModel(
        **{
            "sample_size": resolution // 2,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "cross_attention_dim": 16,
            "attention_head_dim": 2,
            "norm_num_groups": 4,
            **(unet or {}),
        }
    )
    vae_model = diffusers.AutoencoderKL(
        **{
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [8, 8],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 4,
            "sample_size": resolution,
            **(vae or {}),
        }
    )
    for model in (vae_model, text_model, unet_model):  # the order fixes which noise each model gets
        perturbed(model, perturb)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae_model,
        text_encoder=text_model,
        tokenizer=tokenizer,
        unet=unet_model,
        scheduler=diffusers.DDIMScheduler(**{**SD14_DDIM, **(scheduler or {})}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def save_tiny_flux(
    folder: Path,
    *,
    words: Sequence[str] = FLUX_WORDS,
    resolution: int = 32,
    seed: int = 0,
    perturb: float = 0.1,
    text_encoder: Mapping[str, Any] | None = None,
    text_encoder_2: Mapping[str, Any] | None = None,
    transformer: Mapping[str, Any] | None = None,
    vae: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
) -> FluxPipeline:
    """Saves a tiny random FluxPipeline into ``folder`` and returns it.

    FLUX.1-dev's structure: a guidance-embedded transformer (one double- and one single-stream block, two
    heads of 8), a four-block 16-channel VAE (x8 downscale) with FLUX's latent scaling and no quant convs, a
    CLIP-L-style text encoder (one layer, pooled) and a gated-gelu T5 encoder (width 24) over tokenizers of
    ``words``, FLUX.1-dev's dynamic-shift scheduler. ``resolution`` (pixels) is written as the VAE's
    informational ``sample_size``.
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as source:
        tokenizer = save_clip_tokenizer(Path(source), words)
    tokenizer_2 = t5_tokenizer(words)
    clip_model = _clip_text_encoder(tokenizer, {"num_hidden_layers": 1, **(text_encoder or {})})
    t5_model = transformers.T5EncoderModel(
        transformers.T5Config(
            **{
                "vocab_size": len(tokenizer_2),
                "d_model": 24,
                "d_kv": 8,
                "d_ff": 32,
                "num_layers": 1,
                "num_heads": 2,
                "feed_forward_proj": "gated-gelu",
                "dropout_rate": 0.0,
                **(text_encoder_2 or {}),
            }
        )
    )
    transformer_model = diffusers.FluxTransformer2DModel(
        **{
            "in_channels": 64,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "joint_attention_dim": 24,
            "pooled_projection_dim": 16,
            "guidance_embeds": True,
            "axes_dims_rope": (2, 2, 4),
            **(transformer or {}),
        }
    )
    vae_model = diffusers.AutoencoderKL(
        **{
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [8, 8, 8, 8],
            "layers_per_block": 1,
            "latent_channels": 16,
            "norm_num_groups": 4,
            "sample_size": resolution,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            **(vae or {}),
        }
    )
    for model in (clip_model, t5_model, transformer_model, vae_model):
        perturbed(model, perturb)
    pipe = FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**{**FLUX1_DEV_SCHEDULER, **(scheduler or {})}),
        vae=vae_model,
        text_encoder=clip_model,
        tokenizer=tokenizer,
        text_encoder_2=t5_model,
        tokenizer_2=tokenizer_2,
        transformer=transformer_model,
    )
    pipe.save_pretrained(folder)
    return pipe


def save_tiny_clip_model(
    folder: Path,
    *,
    words: Sequence[str] = SD_WORDS,
    image_size: int = 8,
    seed: int = 0,
    perturb: float = 0.1,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    projection_dim: int = 8,
) -> transformers.CLIPModel:
    """Saves a tiny PickScore-shaped CLIPModel into ``folder`` and returns it: LAION-style gelu towers of width
    16 (one layer each, 4-pixel patches), its :func:`save_clip_tokenizer` files over ``words`` and a
    CLIPImageProcessor config resizing and centre-cropping images to ``image_size`` pixels."""
    torch.manual_seed(seed)
    tokenizer = save_clip_tokenizer(folder, words)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "eos_token_id": tokenizer.eos_token_id,
            **(text or {}),
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 4,
            "hidden_act": "gelu",
            **(vision or {}),
        },
        projection_dim=projection_dim,
    )
    model = perturbed(transformers.CLIPModel(config), perturb)
    model.save_pretrained(folder)
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return model
