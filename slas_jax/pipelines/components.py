"""Pipeline components (UNet / FLUX transformer / CLIP text / T5 / VAE) from a diffusers folder or from a
converted one.

A diffusers folder holds each component as ``<name>/config.json`` + safetensors, converted on every load by
the declarative tables of ``slas_jax.models``. A converted folder (written by ``python -m slas_jax.convert``,
marked by :data:`MARKER`) holds each component's ``nnx.State`` as an Orbax checkpoint in ``<name>/state``
beside its copied ``config.json``; loading it builds the module abstractly (``nnx.eval_shape``) from the config
and restores the arrays onto it: no safetensors parsing, no layout conversion. Parameters are float32 in both
cases; the compute dtype and rematerialisation are chosen at load time.

Component names are diffusers' and mean the same class in every supported pipeline: ``unet``, ``transformer``
(FLUX), ``text_encoder`` (CLIP text), ``text_encoder_2`` (T5, FLUX) and ``vae``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from slas_jax.models import clip, conversion, flux, t5, unet, vae
from slas_jax.models.conversion import ConversionError

MARKER = "slas_jax_converted.json"
"""The file that makes a folder a converted checkpoint; written last by the converter."""
FORMAT_VERSION = 1
STATE_DIR = "state"
"""Orbax checkpoint folder inside each converted component folder."""


def _unet_config(folder: Path, **overrides: Any) -> unet.UNetConfig:
    # diffusers keeps prediction_type in the sibling scheduler config; load_unet reads it the same way.
    scheduler = folder.parent / "scheduler" / "scheduler_config.json"
    extra = {}
    if scheduler.is_file():
        extra["prediction_type"] = json.loads(scheduler.read_text()).get("prediction_type", "epsilon")
    return unet.UNetConfig.from_dict({**extra, **conversion.read_config(folder)}, **overrides)


@dataclass(frozen=True)
class ComponentKind:
    """load(folder, dtype=, remat=): the module with converted weights from a diffusers / transformers
    folder; make(folder, dtype=, remat=): the module with fresh parameters from the folder's config.json alone
    (called under ``nnx.eval_shape``, so nothing is allocated)."""

    load: Callable[..., nnx.Module]
    make: Callable[..., nnx.Module]


COMPONENTS: dict[str, ComponentKind] = {
    "unet": ComponentKind(
        unet.load_unet, lambda f, **kw: unet.UNet2DConditionModel(_unet_config(f, **kw), rngs=nnx.Rngs(0))
    ),
    "transformer": ComponentKind(
        flux.load_flux_transformer,
        lambda f, **kw: flux.FluxTransformer2DModel(
            flux.FluxConfig.from_dict(conversion.read_config(f), **kw), rngs=nnx.Rngs(0)
        ),
    ),
    "text_encoder": ComponentKind(
        clip.load_clip_text,
        lambda f, **kw: clip.CLIPTextModel(
            clip.CLIPTextConfig.from_dict(conversion.read_config(f), **kw), rngs=nnx.Rngs(0)
        ),
    ),
    "text_encoder_2": ComponentKind(
        t5.load_t5_encoder,
        lambda f, **kw: t5.T5EncoderModel(
            t5.T5Config.from_dict(conversion.read_config(f), **kw), rngs=nnx.Rngs(0)
        ),
    ),
    "vae": ComponentKind(
        vae.load_vae,
        lambda f, **kw: vae.AutoencoderKL(
            vae.VAEConfig.from_dict(conversion.read_config(f), **kw), rngs=nnx.Rngs(0)
        ),
    ),
}


def is_converted(folder: str | Path) -> bool:
    """Whether ``folder`` is a converted checkpoint (holds :data:`MARKER`)."""
    return (Path(folder) / MARKER).is_file()


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The converted folder's marker: format_version, pipeline (model_index.json's _class_name), components,
    source."""
    path = Path(folder) / MARKER
    marker = json.loads(path.read_text())
    if marker.get("format_version") != FORMAT_VERSION:
        raise ConversionError(
            f"{path} has format_version {marker.get('format_version')!r}, this slas_jax reads {FORMAT_VERSION}; "
            "re-run python -m slas_jax.convert on the diffusers folder"
        )
    return marker


def save_state(module: nnx.Module, directory: str | Path) -> None:
    """Writes ``module``'s whole ``nnx.State`` as an Orbax checkpoint into ``directory`` (must not exist)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(directory).absolute(), nnx.state(module))
    checkpointer.wait_until_finished()
    checkpointer.close()


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{dotted leaf path: (shape, dtype)} of a state, an abstract state or Orbax's metadata of one."""
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        # DictKey / SequenceKey / GetAttrKey (a Variable's value) all become plain names.
        parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
        specs[".".join(str(p) for p in parts)] = (tuple(leaf.shape), leaf.dtype)
    return specs


def _first_difference(stored: dict[str, Any], expected: dict[str, Any]) -> str:
    for name, spec in expected.items():
        if name not in stored:
            return f"{name} is not stored"
        if stored[name] != spec:
            return f"{name} is stored as {stored[name][0]} {stored[name][1]}, the config gives {spec[0]} {spec[1]}"
    return f"{next(iter(set(stored) - set(expected)))} is stored but not in the model"


Place = Callable[[nnx.State], Any]
"""abstract state -> the tree of jax Shardings its arrays are loaded onto (``slas_jax.placement``)."""


def restore_module(
    make: Callable[[], nnx.Module], directory: str | Path, *, what: str, place: Place | None = None
) -> nnx.Module:
    """``make()`` built abstractly, its state restored from the Orbax checkpoint in ``directory`` onto the
    shardings ``place`` gives (each device reads its own slices), or without one onto this process's first
    device."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise ConversionError(
            f"{what}: {directory} is missing; re-run python -m slas_jax.convert on the diffusers folder"
        )
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    if place is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    else:
        shardings = place(abstract)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    checkpointer = ocp.StandardCheckpointer()
    try:
        # Compared before restoring: Orbax reports a mismatch as a long message after a burst of async errors.
        stored = _leaf_specs(checkpointer.metadata(directory).item_metadata)
        expected = _leaf_specs(abstract)
        if stored != expected:
            raise ConversionError(
                f"{what}: the state in {directory} does not fit its config.json "
                f"({_first_difference(stored, expected)}); re-run python -m slas_jax.convert"
            )
        state = checkpointer.restore(directory, abstract)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state)


def load_component(
    folder: str | Path, name: str, *, dtype: Any, remat: bool = False, place: Place | None = None
) -> nnx.Module:
    """Component ``name`` of the diffusers or converted pipeline folder ``folder``, its parameters on the
    shardings ``place`` gives (read shard by shard: ``conversion.convert_tensors``, :func:`restore_module`)
    or, without one, whole on the default device."""
    if name not in COMPONENTS:
        raise ConversionError(f"unknown component {name!r}; supported: {', '.join(COMPONENTS)}")
    folder = Path(folder)
    kind = COMPONENTS[name]
    if not is_converted(folder):
        return kind.load(folder / name, dtype=dtype, remat=remat, place=place)
    if name not in read_marker(folder).get("components", ()):
        raise ConversionError(
            f"converted folder {folder} has no {name}; re-run python -m slas_jax.convert on the diffusers folder"
        )
    return restore_module(
        lambda: kind.make(folder / name, dtype=dtype, remat=remat),
        folder / name / STATE_DIR,
        what=f"{name} of converted folder {folder}",
        place=place,
    )


def abstract_component(
    folder: str | Path, name: str, *, dtype: Any, remat: bool = False, place: Place | None = None
) -> nnx.Module:
    """Component ``name`` of a pipeline folder built by ``nnx.eval_shape`` from its ``config.json`` alone:
    parameters are ShapeDtypeStructs, no weights are read and nothing is allocated (for planning; ``place``
    is not needed)."""
    if name not in COMPONENTS:
        raise ConversionError(f"unknown component {name!r}; supported: {', '.join(COMPONENTS)}")
    make = COMPONENTS[name].make
    return nnx.eval_shape(lambda: make(Path(folder) / name, dtype=dtype, remat=remat))


def load_components(
    folder: str | Path,
    names: Sequence[str],
    *,
    dtype: Any,
    remat: bool = False,
    abstract: bool = False,
    place: Place | None = None,
) -> tuple[nnx.Module, ...]:
    """Components ``names`` of a diffusers or converted pipeline folder, in order. ``names[0]`` is the trained
    backbone, the one ``remat`` (recompute blocks in the backward pass) applies to: no gradient flows through
    the frozen rest. ``abstract``: built from the config.json files only (:func:`abstract_component`);
    ``place``: see :func:`load_component`."""
    load = abstract_component if abstract else load_component
    return tuple(
        load(folder, name, dtype=dtype, remat=remat and i == 0, place=place) for i, name in enumerate(names)
    )
