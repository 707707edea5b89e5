"""A trained backbone written back as a diffusers pipeline folder: the inverse of loading one.

For a model built from a diffusers folder (``model.checkpoint``), :func:`export_diffusers` writes

- ``<backbone>/diffusion_pytorch_model.safetensors`` (sharded past 10 GB, as ``save_pretrained`` does):
  the trained UNet (``unet``) or FLUX transformer (``transformer``) in diffusers' tensor names and layouts,
  float32, obtained by inverting the same conversion rules that load it (``models.unet`` /
  ``models.flux`` ``CONVERSION_RULES``; the names and shapes are those of the source folder's tensors);
- ``<backbone>/config.json``, the source's (the architecture does not change);
- a symbolic link to every other entry of the source folder (``model_index.json``, text encoders, VAE,
  tokenizers, scheduler, ...), which training leaves untouched. ``cp -rL`` makes a self-contained copy.

``diffusers.StableDiffusionPipeline.from_pretrained`` / ``FluxPipeline.from_pretrained`` load the folder,
and so do ``python -m slas_jax.convert`` and ``model.checkpoint``. A converted folder (``slas_jax.convert``)
holds no diffusers tensors: its export takes names, config and the other components from the diffusers
folder it was converted from (its marker's ``source``), which must still be there.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slas_jax.models import conversion, flux, unet
from slas_jax.models.conversion import ConversionError, Rule
from slas_jax.pipelines.components import is_converted, read_marker

WEIGHTS_STEM = "diffusion_pytorch_model"


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


def export_diffusers(folder: str | Path, family: str, checkpoint: str | Path, params: Any) -> Path:
    """Writes the diffusers pipeline folder ``folder`` (replacing one there) holding ``params`` (the
    backbone's nnx.State, host or device arrays) as the backbone of ``checkpoint``'s pipeline (a diffusers
    or converted folder of model family ``family``). Written beside and renamed into place, so an
    interrupted export leaves no half folder. Returns ``folder``."""
    source = diffusers_source(checkpoint)
    backbone = BACKBONES[family]
    component = source / backbone.component
    shapes = {
        name: array.shape
        for name, array in conversion.read_weights(component, what=backbone.component).items()
    }
    tensors = conversion.export_tensors(
        params, shapes, backbone.rules, ignore=backbone.ignored, source=f"{backbone.component} of {source}"
    )
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    conversion.write_safetensors(partial / backbone.component, tensors, WEIGHTS_STEM)
    shutil.copy2(component / "config.json", partial / backbone.component / "config.json")
    for entry in sorted(source.iterdir()):
        if entry.name != backbone.component:
            os.symlink(entry.absolute(), partial / entry.name)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder
