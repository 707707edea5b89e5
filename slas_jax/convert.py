"""Command line: ``python -m slas_jax.convert <diffusers folder> <out>``.

Converts every component of a Stable Diffusion (UNet, CLIP text, VAE) or FLUX (transformer, CLIP text, T5,
VAE) diffusers folder once, with the same loaders the pipelines use, and stores each ``nnx.State`` with Orbax,
so that later runs restore it directly (see ``slas_jax.pipelines.components``). The pipeline kind is read
from model_index.json's ``_class_name``. The tokenizer and scheduler folders, each component's config.json
and model_index.json are copied, so the converted folder is a drop-in ``model.checkpoint``. The marker file
``slas_jax_converted.json`` is written last: an interrupted conversion is never mistaken for a finished one.

Errors end with one line on stderr and exit code 2 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slas_jax.cli import Command, Parsed
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines.components import COMPONENTS, FORMAT_VERSION, MARKER, STATE_DIR, save_state

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
            "CompVis/stable-diffusion-v1-4 or black-forest-labs/FLUX.1-dev as downloaded from the Hugging Face Hub"
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
        counts[component] = sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
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


COMMAND = Command("convert", __doc__, positionals=("source", "out"))


def convert_command(parsed: Parsed) -> str:
    """The command's body: ``source`` (a diffusers pipeline folder with model_index.json) -> ``out``."""
    source, out = parsed.args
    marker = convert_pipeline(source, out)
    return f"done: {marker['pipeline']} ({', '.join(marker['components'])}) converted into {out}"


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(convert_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
