"""Project-pretrained weights (``python -m slas_jax.pretrain``, ``python -m slas_jax.rewards.proxy``): saving,
hashing and restoring them.

A checkpoint folder holds ``params/`` (Orbax, one array per parameter, keyed by its dotted pytree path under
its group, e.g. ``backbone.x_embedder.kernel.value`` or ``text.text_model.final_layer_norm.scale.value``) and
``metadata.json`` (the architecture, the config it was trained with, evaluation numbers, the parameter hash
and the command that regenerates it). :func:`restore_pretrained` puts a base model's ``backbone`` and
``text`` groups into a :class:`~slas_jax.pipelines.PipelineBundle` built from the same config (the
``model.init_checkpoint`` hook of ``build_pipeline``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from slas_jax.config import Config, load_config
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import PipelineBundle, build_pipeline
from slas_jax.samplers import FlowSampler

PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"
REGENERATE = {
    "flow": "python -m slas_jax.pretrain --config configs/shapes_pretrain_flow.py",
    "unet": "python -m slas_jax.pretrain --config configs/shapes_pretrain_unet.py",
}
REGENERATE_ANY = "python -m slas_jax.pretrain --config configs/shapes_pretrain_<flow|unet>.py"


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
    there) and ``metadata`` as indented JSON in ``folder/metadata.json``."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder / PARAMS_DIR, {k: np.asarray(v) for k, v in flatten(groups).items()}, force=True)
    checkpointer.wait_until_finished()
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def read_metadata(folder: str | Path, regenerate: str) -> dict[str, Any]:
    """``folder/metadata.json``; FileNotFoundError naming the folder, the files and ``regenerate`` (the
    command that writes them) when the checkpoint is not there."""
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file() or not (folder / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"pretrained checkpoint {folder.absolute()} is missing (it needs {METADATA_FILE} and {PARAMS_DIR}/); "
            f"regenerate it with `{regenerate}`"
        )
    return json.loads((folder / METADATA_FILE).read_text())


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
    """``bundle`` with its backbone (``params``) and text encoder (``frozen["text"]``) replaced by the
    pretrained weights in ``path`` (a folder written by ``python -m slas_jax.pretrain``).

    The bundle must come from a randomly initialised pipeline built from the same model config as the
    checkpoint (the architecture is checked parameter by parameter). Missing folder: FileNotFoundError;
    other architecture: ConversionError; both one line naming the command that regenerates the checkpoint.
    """
    kind = "flow" if isinstance(bundle.pipeline.sampler, FlowSampler) else "unet"
    if "text" not in bundle.frozen:
        raise ConversionError(
            f"pretrained checkpoint {path}: the pipeline has no single text encoder ('text'); project "
            "checkpoints fit randomly initialised pixel-space pipelines only"
        )
    restored = restore_groups(
        path, {"backbone": bundle.params, "text": bundle.frozen["text"]}, REGENERATE[kind]
    )
    # Back onto jax arrays (Orbax returns numpy), keeping each nnx.State's structure.
    restored = jax.tree.map(jax.numpy.asarray, restored)
    return dataclasses.replace(
        bundle, params=restored["backbone"], frozen={**bundle.frozen, "text": restored["text"]}
    )


def load_base_model(folder: str | Path) -> tuple[Config, PipelineBundle]:
    """A pretrained base model as its checkpoint records it: the run config holding its ``model`` (with
    ``init_checkpoint`` = ``folder``) and ``sampler`` sections (other sections at their defaults), and the
    bundle built from it with the pretrained weights."""
    metadata = read_metadata(folder, REGENERATE_ANY)
    config = load_config(
        {"model": {**metadata["model"], "init_checkpoint": str(folder)}, "sampler": metadata["sampler"]}
    )
    return config, build_pipeline(config, metadata["vocabulary"])


def export_policy(
    folder: str | Path, config: Config, params: Any, frozen: Mapping[str, Any], info: Mapping[str, Any]
) -> str:
    """Writes an RL-trained policy as a base-model checkpoint (the layout :func:`load_base_model` reads and
    ``model.init_checkpoint`` accepts): ``params`` (the backbone) and ``frozen["text"]`` under the metadata
    of ``config.model.init_checkpoint`` (architecture, sampler, vocabulary), plus ``info`` (how it was
    trained) as ``metadata["rl"]``. Returns the parameter hash. Gathers every leaf to this host, so it
    suits models that fit one host's memory (the project's pixel-space base models)."""
    source = config.model.init_checkpoint
    if not source or "text" not in frozen:
        raise ConversionError(
            "exporting a policy needs a project base model (model.init_checkpoint, written by "
            "`python -m slas_jax.pretrain`) and its single text encoder"
        )
    base = read_metadata(source, REGENERATE_ANY)
    groups = {"backbone": jax.device_get(params), "text": jax.device_get(frozen["text"])}
    digest = params_hash(groups)
    metadata = {
        **{k: base[k] for k in ("kind", "family", "model", "sampler", "vocabulary")},
        "rl": {**info, "init_checkpoint": str(source)},
        "num_params": {k: count_params(v) for k, v in groups.items()},
        "params_sha256": digest,
    }
    save_checkpoint(folder, groups, metadata)
    return digest
