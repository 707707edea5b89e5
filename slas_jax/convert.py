"""Command line: ``python -m slas_jax.convert <diffusers folder | HPS folder> <out>``.

A diffusers folder: converts every component of a Stable Diffusion (UNet, CLIP text, VAE) or FLUX (transformer, CLIP text, T5,
VAE) diffusers folder once, with the same loaders the pipelines use, and stores each ``nnx.State`` with Orbax,
so that later runs restore it directly (see ``slas_jax.pipelines.components``). The pipeline kind is read
from model_index.json's ``_class_name``. The tokenizer and scheduler folders, each component's config.json
and model_index.json are copied, so the converted folder is a drop-in ``model.checkpoint``. The marker file
``slas_jax_converted.json`` is written last: an interrupted conversion is never mistaken for a finished one.

An HPS folder (open_clip's ViT-H-14 files and HPS_v2.1_compressed.pt; the layout is in
``slas_jax.rewards.hps``): reads the PyTorch files with torch, the HPS state dict over the base weights, and
writes the ``hps_v2`` reward's folder (Orbax state, open_clip config, tokenizer files, marker).

Errors end with one line on stderr and exit code 2 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slas_jax.cli import Command, Parsed
from slas_jax.models import conversion, open_clip
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines.components import COMPONENTS, FORMAT_VERSION, MARKER, STATE_DIR, save_state
from slas_jax.rewards import hps

PIPELINES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "StableDiffusionPipeline": (("unet", "text_encoder", "vae"), ("tokenizer", "scheduler")),
    "FluxPipeline": (
        ("transformer", "text_encoder", "text_encoder_2", "vae"),
        ("tokenizer", "tokenizer_2", "scheduler"),
    ),
}
"""model_index.json _class_name -> (converted components, copied folders)."""


def pipeline_layout(source: Path) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(class name, components, copied folders) of the diffusers folder ``source``, or ConversionError."""
    index = source / "model_index.json"
    if not index.is_file():
        raise ConversionError(
            f"{source} is not a diffusers pipeline folder (no model_index.json); expected e.g. "
            "CompVis/stable-diffusion-v1-4 or black-forest-labs/FLUX.1-dev as downloaded from the Hugging Face Hub, "
            f"or an HPS folder with {hps.HPS_WEIGHTS} (layout: slas_jax.rewards.hps)"
        )
    name = json.loads(index.read_text()).get("_class_name")
    if name not in PIPELINES:
        raise ConversionError(
            f"{index}: _class_name {name!r} is not supported; supported: {', '.join(PIPELINES)}"
        )
    components, copied = PIPELINES[name]
    for folder in copied:
        if not (source / folder).is_dir():
            raise ConversionError(f"{source} lacks the {folder}/ folder that a {name} folder has")
    return name, components, copied


def convert_pipeline(source: str | Path, out: str | Path, *, log: Any = print) -> dict[str, Any]:
    """Converts the diffusers folder ``source`` into the new folder ``out``; returns the marker written."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.is_dir():
        raise ConversionError(f"diffusers folder {source} does not exist")
    name, components, copied = pipeline_layout(source)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"output folder {out} already exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for folder in copied:
        shutil.copytree(source / folder, out / folder)
    counts = {}
    for component in components:
        start = time.perf_counter()
        # One component at a time, float32 parameters as the pipelines hold them; freed before the next.
        module = COMPONENTS[component].load(source / component, dtype=jnp.float32)
        (out / component).mkdir()
        shutil.copy2(source / component / "config.json", out / component / "config.json")
        save_state(module, out / component / STATE_DIR)
        counts[component] = _parameter_count(module)
        del module
        log(f"{component}: {counts[component]:,} parameters in {time.perf_counter() - start:.1f} s")
    shutil.copy2(source / "model_index.json", out / "model_index.json")
    marker = {
        "format_version": FORMAT_VERSION,
        "pipeline": name,
        "components": list(components),
        "parameters": counts,
        "source": str(source.absolute()),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def _parameter_count(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def read_torch_tensors(path: Path, entry: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch file (``torch.save`` of a state dict, or of a dict holding one under
    ``entry``) as float32 / integer numpy arrays. torch is imported here only: conversion time, not run time."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file surfaces as one of many pickle / zip errors
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({e}); re-download it") from e
    if entry is not None:
        if not isinstance(loaded, Mapping) or entry not in loaded:
            raise ConversionError(f"{path} has no {entry!r} entry; expected HPSv2's {{'state_dict': ...}}")
        loaded = loaded[entry]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors")
    # numpy has no bfloat16: floating tensors become float32 (the parameters' dtype here anyway).
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in loaded.items()}


def hps_layout(source: Path) -> Path:
    """The base weights file of the HPS source folder ``source``, or ConversionError naming what it lacks."""
    base = next((source / name for name in hps.BASE_WEIGHTS if (source / name).is_file()), None)
    needed = (hps.CONFIG_FILE, *hps.TOKENIZER_FILES, hps.HPS_WEIGHTS)
    missing = [name for name in needed if not (source / name).is_file()]
    if base is None:
        missing.append(" or ".join(hps.BASE_WEIGHTS))
    if missing:
        raise ConversionError(f"HPS folder {source} lacks {', '.join(missing)}; expected {hps.SOURCE_FILES}")
    return base


def convert_hps(source: str | Path, out: str | Path, *, log: Any = print) -> dict[str, Any]:
    """Converts the HPS source folder ``source`` into the new folder ``out`` (the ``hps_v2`` reward's
    checkpoint); returns the marker written."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    base = hps_layout(source)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"output folder {out} already exists and is not empty; choose a new folder")
    start = time.perf_counter()
    model_cfg = hps.read_model_config(source)
    tensors = conversion.read_safetensors(base) if base.suffix == ".safetensors" else read_torch_tensors(base)
    # HPSv2 builds the pretrained model, then loads its state dict over it.
    tensors = {**tensors, **read_torch_tensors(source / hps.HPS_WEIGHTS, "state_dict")}
    module = open_clip.load_open_clip(tensors, model_cfg, source=f"HPS folder {source}")
    out.mkdir(parents=True, exist_ok=True)
    for name in (hps.CONFIG_FILE, *hps.TOKENIZER_FILES):
        shutil.copy2(source / name, out / name)
    save_state(module, out / STATE_DIR)
    count = _parameter_count(module)
    log(f"HPS-v2.1 CLIP: {count:,} parameters in {time.perf_counter() - start:.1f} s")
    marker = {
        "format_version": FORMAT_VERSION,
        "reward": hps.KIND,
        "parameters": count,
        "weights": [base.name, hps.HPS_WEIGHTS],
        "source": str(source.absolute()),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


COMMAND = Command("convert", __doc__, positionals=("source", "out"))


def convert_command(parsed: Parsed) -> str:
    """The command's body: ``source`` (a diffusers pipeline folder with model_index.json, or an HPS folder
    with HPS_v2.1_compressed.pt) -> ``out``."""
    source, out = parsed.args
    if (Path(source).expanduser() / hps.HPS_WEIGHTS).is_file():
        marker = convert_hps(source, out)
        return f"done: HPS-v2.1 ({marker['parameters']:,} parameters) converted into {out}"
    marker = convert_pipeline(source, out)
    return f"done: {marker['pipeline']} ({', '.join(marker['components'])}) converted into {out}"


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(convert_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
