"""Weight folders: a trained backbone (and, for randomly initialised models, their text encoder) with the
record of how it was made. Pretraining runs, ``train.export_every`` policy exports and learned rewards write
them; ``model.init_checkpoint`` starts a run from one.

A folder holds ``params/`` (Orbax, one array per parameter, keyed by its dotted pytree path under its group,
e.g. ``backbone.x_embedder.kernel.value`` or ``text.text_model.final_layer_norm.scale.value``) and
``metadata.json`` (the ``model`` and ``sampler`` config sections, the prompt vocabulary of a word-level
tokenizer, evaluation numbers, the parameter hash and the ``command`` that regenerates it). A policy of a
model built from a diffusers folder also holds ``diffusers/``, the same backbone as a diffusers pipeline
folder (:data:`DIFFUSERS_DIR`).
:func:`restore_pretrained` puts a folder's ``backbone`` (and ``text``, when it holds one) into a
:class:`~slas_jax.pipelines.PipelineBundle` built from the same config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from slas_jax import lora, parallel
from slas_jax.config import Config, json_ready, load_config
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.pipelines.export import export_diffusers

PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"
WRITTEN_BY = "a pretraining run or train.export_every"
DIFFUSERS_DIR = "diffusers"
"""The diffusers pipeline folder inside a policy export of a model built from a diffusers folder."""


def _path_key(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def flatten(groups: Mapping[str, Any]) -> dict[str, Any]:
    """{group: pytree} -> {"group.dotted.path": leaf}, the layout stored in ``params/``."""
    return {
        f"{group}.{_path_key(path)}": leaf
        for group, tree in groups.items()
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def count_params(tree: Any) -> int:
    """The number of scalars in a pytree of arrays."""
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def params_hash(groups: Mapping[str, Any]) -> str:
    """sha256 (hex) over the sorted flattened parameters: each key, dtype, shape and raw bytes. Two runs that
    produce bit-identical parameters give the same hash."""
    digest = hashlib.sha256()
    for key, leaf in sorted(flatten(groups).items()):
        array = np.asarray(leaf)
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save_checkpoint(folder: str | Path, groups: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Writes ``groups`` ({name: pytree of arrays}) with Orbax under ``folder/params`` (replacing what is
    there) and ``metadata`` as indented JSON in ``folder/metadata.json``. On a multi-host run every process
    calls it with the same host arrays; process 0 writes the files."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder / PARAMS_DIR, {k: np.asarray(v) for k, v in flatten(groups).items()}, force=True)
    checkpointer.wait_until_finished()
    if parallel.is_primary():
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def read_metadata(folder: str | Path, regenerate: str = "") -> dict[str, Any]:
    """``folder/metadata.json``; FileNotFoundError naming the folder, the files and ``regenerate`` (the
    command that writes them; default: what writes weight folders) when the folder is not there."""
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file() or not (folder / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"weights folder {folder.absolute()} is missing (it needs {METADATA_FILE} and {PARAMS_DIR}/); "
            f"regenerate it with `{regenerate or WRITTEN_BY}`"
        )
    try:
        return json.loads((folder / METADATA_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(
            f"{folder / METADATA_FILE} is not valid JSON ({e}); regenerate the folder"
        ) from e


def stored_groups(folder: str | Path) -> set[str]:
    """The parameter groups (``backbone``, ``text``, ...) a weights folder holds."""
    stored = ocp.StandardCheckpointer().metadata(Path(folder).absolute() / PARAMS_DIR).item_metadata
    return {key.split(".", 1)[0] for key in stored}


def stored_parts(folder: str | Path) -> tuple[bool, bool]:
    """(base, adapters): whether a weights folder's backbone holds base weights and LoRA adapters. A LoRA
    policy of a diffusers-folder model holds only the adapters (:func:`export_policy`)."""
    stored = ocp.StandardCheckpointer().metadata(Path(folder).absolute() / PARAMS_DIR).item_metadata
    adapter = [".lora_a." in key or ".lora_b." in key for key in stored if key.startswith("backbone.")]
    return not all(adapter), any(adapter)


def restore_groups(folder: str | Path, groups: Mapping[str, Any], regenerate: str) -> dict[str, Any]:
    """Restores the stored arrays into the structure of ``groups`` ({name: pytree}, e.g. freshly initialised
    parameters), returning {name: pytree} of numpy arrays with the same structure.

    Raises ConversionError naming the first missing, extra or mis-shaped parameter when the stored
    architecture differs, and FileNotFoundError when the folder is incomplete; both name ``regenerate``.
    """
    folder = Path(folder).absolute()
    read_metadata(folder, regenerate)
    expected = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in flatten(groups).items()}
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(folder / PARAMS_DIR).item_metadata
    stored = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in stored.items()}
    problem = None
    if missing := sorted(expected.keys() - stored.keys()):
        problem = f"it lacks {missing[0]} ({len(missing)} parameters missing)"
    elif extra := sorted(stored.keys() - expected.keys()):
        problem = f"it holds {extra[0]}, which the model does not have ({len(extra)} extra parameters)"
    else:
        for key, spec in sorted(expected.items()):
            if stored[key] != (spec.shape, spec.dtype):
                problem = (
                    f"{key} is {stored[key][0]} {stored[key][1]} there but {spec.shape} {spec.dtype} here"
                )
                break
    if problem is not None:
        raise ConversionError(
            f"pretrained checkpoint {folder} does not fit this model's architecture: {problem}; build the "
            f"model from the config the checkpoint records in {METADATA_FILE}, or regenerate it with "
            f"`{regenerate}`"
        )
    flat = checkpointer.restore(folder / PARAMS_DIR, expected)
    return {
        group: jax.tree_util.tree_map_with_path(
            lambda path, _leaf, group=group: flat[f"{group}.{_path_key(path)}"], tree
        )
        for group, tree in groups.items()
    }


def restore_pretrained(bundle: PipelineBundle, path: str | Path) -> PipelineBundle:
    """``bundle`` with its backbone (``params``) and, when the folder holds one, its text encoder
    (``frozen["text"]``) replaced by the weights in ``path``.

    The bundle must come from the model config the folder records (the architecture is checked parameter by
    parameter). Missing folder: FileNotFoundError; other architecture: ConversionError; both one line naming
    the command that regenerates the folder (its metadata's ``command``).
    """
    regenerate = read_metadata(path).get("command") or WRITTEN_BY
    # Under a LoRA config, a folder without adapters (a base model) fills the base weights and the fresh
    # adapters (B = 0) stay, so the run starts from that base model; a folder of adapters alone fills them
    # on the base built from model.checkpoint.
    adapters, base = lora.split(bundle.params)
    has_base, has_adapters = stored_parts(path)
    if lora.has_adapters(bundle.params) and not has_adapters:
        stored, rebuild = base, lambda restored: lora.merge(adapters, restored)
    elif lora.has_adapters(bundle.params) and not has_base:
        stored, rebuild = adapters, lambda restored: lora.merge(restored, base)
    else:
        stored, rebuild = bundle.params, lambda restored: restored
    groups = {"backbone": stored}
    if "text" in stored_groups(path):
        if "text" not in bundle.frozen:
            raise ConversionError(
                f"weights folder {path} holds a text encoder ('text') but the pipeline has no single one"
            )
        groups["text"] = bundle.frozen["text"]
    # Back onto jax arrays (Orbax returns numpy), keeping each nnx.State's structure.
    restored = jax.tree.map(jax.numpy.asarray, restore_groups(path, groups, regenerate))
    frozen = {**bundle.frozen, **({"text": restored["text"]} if "text" in restored else {})}
    return dataclasses.replace(bundle, params=rebuild(restored["backbone"]), frozen=frozen)


def load_policy(folder: str | Path) -> tuple[Config, PipelineBundle]:
    """The model in a weights folder as it records it: the run config holding its ``model`` (with
    ``init_checkpoint`` = ``folder``) and ``sampler`` sections (other sections at their defaults), and the
    bundle built from it with the stored weights."""
    metadata = read_metadata(folder)
    config = load_config(
        {"model": {**metadata["model"], "init_checkpoint": str(folder)}, "sampler": metadata["sampler"]}
    )
    return config, build_pipeline(config, metadata.get("vocabulary", ()))


def export_policy(
    folder: str | Path,
    config: Config,
    params: Any,
    frozen: Mapping[str, Any],
    info: Mapping[str, Any],
    vocabulary: Sequence[str] = (),
) -> str:
    """Writes an RL-trained policy as a weights folder that :func:`load_policy` and ``model.init_checkpoint``
    read, for every backbone: ``params`` (the backbone) and, for a randomly initialised model (no
    ``model.checkpoint``), ``frozen["text"]``, under the run's ``model`` and ``sampler`` sections, the
    prompt ``vocabulary`` of its word-level tokenizer and ``info`` (how it was trained) as
    ``metadata["rl"]``. A model built from a diffusers folder (``model.checkpoint``) is also written as a
    diffusers pipeline folder, ``folder/diffusers`` (``slas_jax.pipelines.export``, written by process 0),
    that diffusers' ``from_pretrained`` loads; ``metadata["diffusers"]`` names it. With LoRA adapters
    (``model.lora``) on such a model and no ``model.init_checkpoint``, ``params/`` holds the adapters alone
    and the diffusers folder links the source's backbone beside ``pytorch_lora_weights.safetensors``: the
    base is ``model.checkpoint``'s. Returns the parameter hash. Gathers every written leaf to every host
    (``parallel.host_value``), so it suits models that fit one host's memory; on a multi-host run every
    process calls it (the gather and Orbax's save are collective, and process 0 writes the files).

    The folder is written beside as ``<folder>.partial`` and then swapped into place (:func:`swap_in`), so
    an export cut short leaves the previous one of that folder whole and never a half-written one."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    # A LoRA policy of a diffusers-folder model is its adapters: the base is that folder's backbone, which
    # load_policy rebuilds (and the diffusers export links) instead of a copy of, say, FLUX.1-dev's 12B.
    adapters_only = (
        lora.has_adapters(params) and config.model.checkpoint is not None and not config.model.init_checkpoint
    )
    groups = {"backbone": parallel.host_value(lora.split(params)[0] if adapters_only else params)}
    if config.model.checkpoint is None and "text" in frozen:
        groups["text"] = parallel.host_value(frozen["text"])
    digest = params_hash(groups)
    source = config.model.init_checkpoint or config.model.checkpoint
    model = dataclasses.replace(config.model, init_checkpoint=None)
    diffusers = {}
    if config.model.checkpoint is not None:
        if parallel.is_primary():  # one writer: hosts may share the run folder
            export_diffusers(
                partial / DIFFUSERS_DIR,
                config.model.family,
                config.model.checkpoint,
                # Gathered; with link_backbone only the adapters are read, leaf by leaf.
                params if adapters_only else groups["backbone"],
                config.model.lora.alpha,
                link_backbone=adapters_only,
            )
        diffusers = {"diffusers": DIFFUSERS_DIR}
    metadata = {
        "kind": "policy",
        "family": config.model.family,
        "model": json_ready(model),
        "sampler": json_ready(config.sampler),
        "vocabulary": list(vocabulary),
        "rl": {**info, "init_checkpoint": source},
        "num_params": {k: count_params(v) for k, v in groups.items()},
        "params_sha256": digest,
        **diffusers,
    }
    save_checkpoint(partial, groups, metadata)
    if parallel.is_primary():
        swap_in(partial, folder)
    return digest


def swap_in(partial: Path, folder: Path) -> None:
    """Puts the complete folder ``partial`` in the place of ``folder`` (which may not exist): two renames,
    between which both the old (``<folder>.old``) and the new folder are whole."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def software() -> dict[str, str]:
    """Versions that bit-for-bit regeneration depends on."""
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "machine": platform.machine(),
    }
