"""A trained backbone written back as a diffusers pipeline folder: the inverse of loading one.

For a model built from a diffusers folder (``model.checkpoint``), :func:`export_diffusers` writes

- ``<backbone>/diffusion_pytorch_model.safetensors`` (sharded past 10 GB, as ``save_pretrained`` does):
  the trained UNet (``unet``) or FLUX transformer (``transformer``) in diffusers' tensor names and layouts,
  float32, obtained by inverting the same conversion rules that load it (``models.unet`` /
  ``models.flux`` ``CONVERSION_RULES``; the names and shapes are those of the source folder's tensors);
- ``<backbone>/config.json``, the source's (the architecture does not change);
- a symbolic link to every other entry of the source folder (``model_index.json``, text encoders, VAE,
  tokenizers, scheduler, ...), which training leaves untouched. ``cp -rL`` makes a self-contained copy.

- with LoRA adapters in the backbone (``model.lora``), also ``pytorch_lora_weights.safetensors``
  (:func:`export_lora`): the adapters in peft's names (``transformer.<module>.lora_A.weight`` /
  ``unet.<module>.lora_B.weight``, the module names those of the backbone's tensors), their rank, alpha and
  target modules in the ``lora_adapter_metadata`` that diffusers' ``save_lora_weights`` writes; the backbone
  holds the base weights, or (a run without ``model.init_checkpoint``, whose base is the source's) is a
  link to the source's like the other components.

``diffusers.StableDiffusionPipeline.from_pretrained`` / ``FluxPipeline.from_pretrained`` load the folder
(then ``pipe.load_lora_weights(folder)`` the adapters; peft must be installed),
and so do ``python -m slas_jax.convert`` and ``model.checkpoint``. A converted folder (``slas_jax.convert``)
holds no diffusers tensors: its export takes names, config and the other components from the diffusers
folder it was converted from (its marker's ``source``), which must still be there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from slas_jax import lora
from slas_jax.models import conversion, flux, unet
from slas_jax.models.conversion import ConversionError, Rule
from slas_jax.pipelines.components import is_converted, read_marker

WEIGHTS_STEM = "diffusion_pytorch_model"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name (``load_lora_weights(folder)`` reads it)."""
LORA_METADATA_KEY = "lora_adapter_metadata"
"""The safetensors metadata entry diffusers reads an adapter's peft LoraConfig from."""


@dataclass(frozen=True)
class Backbone:
    """The trained component of a family: its diffusers folder name and the rules that convert it."""

    component: str
    rules: tuple[Rule, ...]
    ignored: tuple[str, ...]


BACKBONES: dict[str, Backbone] = {
    "unet": Backbone("unet", unet.CONVERSION_RULES, unet.IGNORED),
    "flux": Backbone("transformer", flux.CONVERSION_RULES, flux.IGNORED),
}
"""``model.family`` -> its backbone."""


def diffusers_source(checkpoint: str | Path) -> Path:
    """The diffusers folder behind ``checkpoint``: itself, or for a converted folder the folder its marker
    names as the source; ConversionError when that one is gone."""
    folder = Path(checkpoint)
    if not is_converted(folder):
        return folder
    recorded = read_marker(folder).get("source")
    source = Path(recorded or "<not recorded>")
    if not recorded or not (source / "model_index.json").is_file():
        raise ConversionError(
            f"converted folder {folder} was made from the diffusers folder {source}, which is gone; a diffusers "
            "export reads its tensor names and links its other components: put it back there, or set "
            "model.checkpoint to the diffusers folder"
        )
    return source


def export_diffusers(
    folder: str | Path,
    family: str,
    checkpoint: str | Path,
    params: Any,
    lora_alpha: float = 0.0,
    *,
    link_backbone: bool = False,
) -> Path:
    """Writes the diffusers pipeline folder ``folder`` (replacing one there) holding ``params`` (the
    backbone's nnx.State, host or device arrays) as the backbone of ``checkpoint``'s pipeline (a diffusers
    or converted folder of model family ``family``); LoRA adapters in ``params`` (of ``lora_alpha``,
    ``model.lora.alpha``) are written beside it (:func:`export_lora`), and with ``link_backbone`` (the base
    weights are the source's) the backbone folder is a link to the source's like the other components.
    Written beside and renamed into place, so an interrupted export leaves no half folder. Returns
    ``folder``."""
    source = diffusers_source(checkpoint)
    backbone = BACKBONES[family]
    component = source / backbone.component
    shapes = {
        name: array.shape
        for name, array in conversion.read_weights(component, what=backbone.component).items()
    }
    what = f"{backbone.component} of {source}"
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if not link_backbone:
        _, base = lora.split(params)
        tensors = conversion.export_tensors(
            base, shapes, backbone.rules, ignore=backbone.ignored, source=what
        )
        conversion.write_safetensors(partial / backbone.component, tensors, WEIGHTS_STEM)
        shutil.copy2(component / "config.json", partial / backbone.component / "config.json")
    if lora.has_adapters(params):
        export_lora(partial / LORA_WEIGHTS, backbone, shapes, params, lora_alpha, source=what)
    for entry in sorted(source.iterdir()):
        if link_backbone or entry.name != backbone.component:
            os.symlink(entry.absolute(), partial / entry.name)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def export_lora(
    path: Path, backbone: Backbone, shapes: dict[str, Any], params: Any, alpha: float, *, source: str
) -> None:
    """Writes the LoRA adapters of ``params`` (a backbone state holding :class:`slas_jax.lora.LoraLinear`
    layers of scale ``alpha`` / rank) to the safetensors file ``path`` as diffusers' ``save_lora_weights``
    does: for the layer whose weight is the reference tensor ``<module>.weight`` (``shapes``: the source
    backbone's tensor names), ``<component>.<module>.lora_A.weight`` (rank, in) and ``lora_B.weight``
    (out, rank) float32, ``lora_B @ lora_A`` x alpha / rank being the update of the PyTorch weight (out, in);
    rank, alpha and the target modules go into the metadata. Every adapter (every layer of a stacked one) is
    written once, or ConversionError."""
    layers = lora.adapted_layers(params)
    targets = conversion.reference_targets(
        [name for name in shapes if name.endswith(".weight")], backbone.rules, params, source=source
    )
    tensors: dict[str, np.ndarray] = {}
    written: set[tuple[str, int | None]] = set()
    for name, (target, *_) in targets.items():
        kernel, _, index = target.partition("@")
        module = kernel.removesuffix(".kernel")
        if module not in layers or module == kernel:
            continue
        layer = int(index) if index else None
        a, b = (np.asarray(x if layer is None else x[layer], np.float32) for x in layers[module])
        stem = f"{backbone.component}.{name.removesuffix('.weight')}"
        tensors[f"{stem}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{stem}.lora_B.weight"] = np.ascontiguousarray(b.T)
        written.add((module, layer))
    for module, (a, _) in layers.items():
        expected = {(module, None)} if a.ndim == 2 else {(module, i) for i in range(a.shape[0])}
        if not expected <= written:
            raise ConversionError(
                f"{source}: the adapters of {module} match no tensor of the source backbone"
            )
    rank = next(iter(layers.values()))[0].shape[-1]
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(
            k.removeprefix(f"{backbone.component}.").removesuffix(".lora_A.weight")
            for k in tensors
            if k.endswith("lora_A.weight")
        ),
    }
    metadata = {f"{backbone.component}.{key}": value for key, value in config.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors, str(path), metadata={"format": "pt", LORA_METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    )
