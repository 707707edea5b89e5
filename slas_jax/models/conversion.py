"""Weight conversion from diffusers / transformers checkpoints (safetensors) into our Flax NNX modules.

A conversion is declarative: an ordered table of :class:`Rule` (regex over the reference tensor name ->
our dotted parameter path, plus a transform). The first rule whose pattern matches a reference name wins.
Conversion is checked against ``nnx.eval_shape`` of our model: every reference tensor must be consumed (or
explicitly ignored), every parameter must be filled exactly once, and every shape must agree. Any violation
is a :class:`ConversionError` whose message names the tensor.

The way back, for exports: :func:`export_tensors` inverts a conversion over the same rules (the reference
names and shapes come from the checkpoint the model was converted from), :func:`write_safetensors` writes the
result in ``save_pretrained``'s file layout.

Reading is pure numpy (bfloat16 through ml_dtypes): torch is never imported here. A damaged file (a
truncated or malformed safetensors file, a config.json that is not JSON) is a one-line ConversionError that
names the file.

Paths: our parameters are addressed as dotted strings of the module tree, e.g.
``down_blocks.0.resnets.1.conv1.kernel``. A target written ``stack.attn.kernel@3`` fills index 3 of the
leading (``layers``) axis of a scanned block stack. A target ending in ``.weight`` resolves to whichever of
``kernel`` / ``scale`` / ``embedding`` our module has at that place, so modules that mirror the reference
names need no per-layer rules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from slas_jax.errors import UserError

Transform = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]]

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class ConversionError(UserError):
    """A checkpoint does not fit the model it is loaded into; the message names the tensor or file."""


@dataclass(frozen=True)
class Rule:
    """Maps reference tensor names matching ``pattern`` onto our parameter path(s)."""

    pattern: str
    """Regex searched in each reference tensor name; its groups feed ``target``."""
    target: str | tuple[str, ...]
    """A ``re.sub`` template of our dotted parameter path, or a tuple of templates when ``transform`` splits
    one tensor into several (e.g. a fused qkv projection)."""
    transform: Transform | None = None
    """array -> array (or a tuple, one per target); ``None`` picks the layout change from the target's leaf
    name: ``kernel`` of rank 4 is OIHW -> HWIO, of rank 2 is (out, in) -> (in, out)."""


MIRROR = Rule(r"^(.*)$", r"\1")
"""The catch-all rule: our module tree mirrors the reference names."""


def auto_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """PyTorch -> Flax layout for a tensor landing on parameter leaf ``leaf`` (kernel / scale / bias / ...)."""
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


_REMEDY = "re-download or re-convert it"
# A safetensors file: the JSON header's length (a little-endian uint64), the JSON header, the tensor data.
_HEADER_LENGTH_BYTES = 8


def _damaged(path: Path, problem: str) -> ConversionError:
    return ConversionError(f"{path}: {problem}; {_REMEDY}")


def _read_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file of ``size`` bytes and the offset of its tensor data."""
    with path.open("rb") as f:
        prefix = f.read(_HEADER_LENGTH_BYTES)
        if len(prefix) < _HEADER_LENGTH_BYTES:
            raise _damaged(
                path, f"truncated safetensors file ({size} bytes, shorter than its 8-byte header length)"
            )
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - _HEADER_LENGTH_BYTES:
            raise _damaged(
                path,
                f"truncated or corrupt safetensors file (header length says {header_len} bytes of JSON "
                f"header, file holds {size - _HEADER_LENGTH_BYTES} after it)",
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise _damaged(path, f"safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _damaged(
            path, f"safetensors header is a JSON {type(header).__name__}, not an object of tensors"
        )
    return header, _HEADER_LENGTH_BYTES + header_len


def _tensor_span(path: Path, name: str, info: Any) -> tuple[np.dtype, list[int], int, int]:
    """(dtype, shape, start, end) of one header entry, checked for consistency (``end - start`` bytes hold
    exactly ``shape`` elements of ``dtype``)."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise _damaged(path, f"safetensors header entry of tensor {name} lacks dtype / shape / data_offsets")
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    shape, offsets = info["shape"], info["data_offsets"]
    lists = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
    if not (
        lists and all(isinstance(v, int) and v >= 0 for v in shape + offsets) and offsets[0] <= offsets[1]
    ):
        raise _damaged(path, f"tensor {name} has a malformed shape {shape} or data_offsets {offsets}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    start, end = offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if end - start != nbytes:
        raise _damaged(
            path,
            f"tensor {name} of shape {shape} {info['dtype']} needs {nbytes} bytes, its data_offsets span "
            f"{end - start}",
        )
    return dtype, shape, start, end


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a .safetensors file into numpy arrays (memory-mapped; bfloat16 kept as ml_dtypes.bfloat16).

    A damaged file (truncated, a header length past its end, a header that is not JSON, tensor data shorter
    than the header's offsets) is a one-line ConversionError naming it.
    """
    path = Path(path)
    size = path.stat().st_size
    header, data_start = _read_header(path, size)
    spans = {name: _tensor_span(path, name, info) for name, info in header.items() if name != "__metadata__"}
    needed = max((end for *_, end in spans.values()), default=0)
    if needed > size - data_start:
        raise _damaged(
            path,
            f"truncated safetensors file (header says {needed} bytes of tensor data, file holds "
            f"{size - data_start})",
        )
    # np.memmap refuses an empty mapping: a file of only empty tensors has no data to map.
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start) if needed else np.zeros(0, np.uint8)
    return {
        name: data[start:end].view(dtype).reshape(shape) for name, (dtype, shape, start, end) in spans.items()
    }


SAFETENSORS_INDEX = ".safetensors.index.json"
MAX_SHARD_BYTES = 10 * 10**9
"""diffusers' ``save_pretrained`` default shard size ("10GB")."""


def write_safetensors(
    folder: str | Path,
    tensors: Mapping[str, np.ndarray],
    stem: str,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[Path]:
    """Writes ``tensors`` as ``save_pretrained`` lays them out: ``<stem>.safetensors``, or, past
    ``max_shard_bytes``, shards ``<stem>-00001-of-0000N.safetensors`` (tensors in order, a shard closed
    before it would pass the limit) with ``<stem>.safetensors.index.json`` (``metadata.total_size`` and the
    ``weight_map``). Each file carries the metadata ``{"format": "pt"}`` that PyTorch writers add. Returns the
    files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        names = [f"{stem}.safetensors"]
    else:
        names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        index = {
            "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
            "weight_map": {name: file for file, shard in zip(names, shards, strict=True) for name in shard},
        }
        (folder / f"{stem}{SAFETENSORS_INDEX}").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for file, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / file), metadata={"format": "pt"})
    return [folder / file for file in names]


def _read_json(path: Path) -> Any:
    """A JSON file's content; a file that is not valid JSON is a one-line ConversionError naming it."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise ConversionError(f"{path}: not valid JSON ({e}); re-download it or repair the file") from e


def read_weights(folder: str | Path, *, what: str = "model") -> dict[str, np.ndarray]:
    """All tensors of a diffusers / transformers model folder (single or sharded safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(
            f"{what} folder {folder} does not exist; expected a diffusers/transformers folder with "
            "config.json and *.safetensors"
        )
    indexes = sorted(folder.glob(f"*{SAFETENSORS_INDEX}"))
    if indexes:
        index = _read_json(indexes[0])
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{indexes[0]}: no weight_map object; re-download it or repair the file")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(
            f"no *.safetensors in {folder} ({what}); re-save the model with save_pretrained(..., "
            "safe_serialization=True) or download the safetensors variant"
        )
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        if not file.exists():
            raise ConversionError(f"{file} is listed in the safetensors index but missing")
        tensors.update(read_safetensors(file))
    return tensors


def read_config(folder: str | Path, name: str = "config.json") -> dict[str, Any]:
    """The JSON config of a model folder, with a clear error when it is missing or not a JSON object."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConversionError(f"missing {path}; expected a diffusers/transformers folder with {name}")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ConversionError(
            f"{path}: a JSON {type(config).__name__}, not an object of settings; re-download it or repair "
            "the file"
        )
    return config


def _flat_paths(abstract_state: nnx.State) -> dict[str, Any]:
    """{dotted path: leaf} of a state (of arrays, ShapeDtypeStructs or Shardings)."""
    flat = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(abstract_state))[0]:
        flat[".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)] = leaf
    return flat


def _resolve(target: str, params: Mapping[str, Any]) -> str:
    path, _, index = target.partition("@")
    if path.endswith(".weight") and path not in params:
        stem = path[: -len(".weight")]
        for leaf in ("kernel", "scale", "embedding"):
            if f"{stem}.{leaf}" in params:
                path = f"{stem}.{leaf}"
                break
    return f"{path}@{index}" if index else path


def _route(
    name: str, compiled: Sequence[tuple[re.Pattern[str], Rule]], params: Mapping[str, Any], source: str
) -> tuple[Rule, list[str]]:
    """The first rule matching the reference tensor ``name`` and its resolved targets (``path`` or
    ``path@layer``)."""
    match = next(((m, rule) for regex, rule in compiled if (m := regex.search(name))), None)
    if match is None:
        raise ConversionError(f"{source}: tensor {name} matches no conversion rule")
    m, rule = match
    templates = rule.target if isinstance(rule.target, tuple) else (rule.target,)
    return rule, [_resolve(m.expand(t), params) for t in templates]


def reference_targets(
    names: Iterable[str],
    rules: Sequence[Rule],
    state: nnx.State,
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict[str, tuple[str, ...]]:
    """{reference tensor name: the targets the rules map it to in ``state``, each ``path`` or ``path@layer``}
    for the ``names`` not ignored (how :func:`convert_tensors` routes them), e.g. for writing other tensors,
    such as LoRA adapters, under the reference names of the layers they belong to."""
    params = _flat_paths(state)
    ignore_res = [re.compile(p) for p in ignore]
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    return {
        name: tuple(_route(name, compiled, params, source)[1])
        for name in names
        if not any(r.search(name) for r in ignore_res)
    }


def _leaf(target: str) -> str:
    return target.partition("@")[0].rsplit(".", 1)[-1]


def convert_tensors(
    tensors: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    abstract_state: nnx.State,
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
    shardings: Any = None,
) -> nnx.State:
    """Converts reference tensors into an ``nnx.State`` shaped like ``abstract_state``.

    tensors: reference name -> array; rules: ordered, first match wins; ignore: regexes of reference names
    that are deliberately dropped (e.g. buffers such as ``position_ids``); source: named in errors.
    Returns a state with float arrays cast to each parameter's dtype. ``shardings`` (a tree like
    ``abstract_state`` of jax Shardings; None: each array whole on the default device): each parameter is
    built on its sharding by ``jax.make_array_from_callback``, every device's slice cut from the
    (memory-mapped, :func:`read_safetensors`) reference tensors and converted alone, so the host never holds
    more than one shard of a parameter at a time (a rule's ``transform`` function still sees its whole
    tensor).
    """
    params = _flat_paths(abstract_state)
    ignore_res = [re.compile(p) for p in ignore]
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    filled: dict[str, np.ndarray] = {}
    stacked: dict[str, dict[int, np.ndarray]] = {}
    for name, array in tensors.items():
        if any(r.search(name) for r in ignore_res):
            continue
        rule, targets = _route(name, compiled, params, source)
        array = np.asarray(array)
        if rule.transform is not None:
            outs = rule.transform(array)
            outs = outs if isinstance(outs, tuple) else (outs,)
        else:
            outs = tuple(auto_layout(array, _leaf(t)) for t in targets)
        if len(outs) != len(targets):
            raise ConversionError(
                f"{source}: rule for {name} gives {len(outs)} arrays for {len(targets)} targets"
            )
        for target, out in zip(targets, outs, strict=True):
            path, _, index = target.partition("@")
            if path not in params:
                raise ConversionError(
                    f"{source}: tensor {name} maps to {path}, which the model does not have"
                )
            expected = params[path].shape[1:] if index else params[path].shape
            if tuple(out.shape) != tuple(expected):
                raise ConversionError(
                    f"{source}: tensor {name} has shape {tuple(out.shape)} after conversion but {path} "
                    f"expects {tuple(expected)}"
                )
            if index:
                slot = stacked.setdefault(path, {})
                if int(index) in slot:
                    raise ConversionError(
                        f"{source}: {path}[{index}] is filled twice (second time by {name})"
                    )
                slot[int(index)] = out
            else:
                if path in filled:
                    raise ConversionError(f"{source}: {path} is filled twice (second time by {name})")
                filled[path] = out
    layers: dict[str, list[np.ndarray]] = {}
    for path, slots in stacked.items():
        depth = params[path].shape[0]
        missing = sorted(set(range(depth)) - set(slots))
        if missing:
            raise ConversionError(f"{source}: {path} is missing layers {missing} of {depth}")
        layers[path] = [slots[i] for i in range(depth)]
    missing = sorted(set(params) - set(filled) - set(layers))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{source}: parameter {missing[0]}{more} is not filled by any tensor")

    def part(path: str, index: tuple[slice, ...]) -> np.ndarray:
        """The ``index`` slice of parameter ``path`` in its dtype, read from the reference tensors alone."""
        dtype = params[path].dtype
        if path in layers:
            return np.stack([layer[index[1:]] for layer in layers[path][index[0]]]).astype(dtype)
        return np.asarray(filled[path][index]).astype(dtype)

    if shardings is None:
        whole = {path: tuple(slice(None) for _ in spec.shape) for path, spec in params.items()}
        return _unflatten_into(abstract_state, lambda path: jax.numpy.asarray(part(path, whole[path])))
    flat_shardings = _flat_paths(shardings)

    def placed(path: str) -> jax.Array:
        shape = params[path].shape
        return jax.make_array_from_callback(shape, flat_shardings[path], lambda index: part(path, index))

    return _unflatten_into(abstract_state, placed)


def reference_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """The inverse of :func:`auto_layout`: Flax -> PyTorch layout of a parameter leaf ``leaf``."""
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def export_tensors(
    state: nnx.State,
    shapes: Mapping[str, Sequence[int]],
    rules: Sequence[Rule],
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict[str, np.ndarray]:
    """The inverse of :func:`convert_tensors` over the same rules: the reference tensors named in ``shapes``
    (reference name -> shape: those of the checkpoint ``state``'s structure was converted from), each cut
    from the parameter (or the layer of a stacked one) that the rules map it to and put back into the
    reference layout, contiguous, in the parameter's dtype. Converting the result with the same rules
    gives ``state`` back bit for bit.

    Ignored names are not written. Rules with a ``transform`` (a function, which has no inverse here) are
    refused, and so are a shape that differs from ``shapes``' and a parameter (or layer) used twice or
    never: a ConversionError naming the tensor or the parameter.
    """
    params = {path: np.asarray(value) for path, value in _flat_paths(state).items()}
    ignore_res = [re.compile(p) for p in ignore]
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    out: dict[str, np.ndarray] = {}
    used: dict[str, set[int | None]] = {}
    for name, shape in shapes.items():
        if any(r.search(name) for r in ignore_res):
            continue
        rule, targets = _route(name, compiled, params, source)
        if rule.transform is not None or len(targets) != 1:
            raise ConversionError(
                f"{source}: tensor {name} is converted by a transform function, which cannot be inverted"
            )
        path, _, index = targets[0].partition("@")
        if path not in params:
            raise ConversionError(f"{source}: tensor {name} maps to {path}, which the model does not have")
        layer = int(index) if index else None
        if layer in used.setdefault(path, set()):
            raise ConversionError(f"{source}: {targets[0]} is written twice (second time as {name})")
        used[path].add(layer)
        array = reference_layout(params[path] if layer is None else params[path][layer], _leaf(path))
        if tuple(array.shape) != tuple(shape):
            raise ConversionError(
                f"{source}: tensor {name} comes out {tuple(array.shape)} from {targets[0]}, the checkpoint "
                f"has {tuple(shape)}"
            )
        out[name] = np.ascontiguousarray(array)
    whole = {None}
    for path, value in params.items():
        # A parameter is written whole, or (a stacked one) layer by layer, every layer once.
        if used.get(path) not in (whole, set(range(value.shape[0])) if value.ndim else whole):
            raise ConversionError(f"{source}: parameter {path} is not written (fully) to any tensor")
    return out


def _unflatten_into(abstract_state: nnx.State, value_of: Callable[[str], jax.Array]) -> nnx.State:
    """``abstract_state`` with each leaf replaced by ``value_of(its dotted path)``."""

    def value_at(keys: tuple[Any, ...], _leaf: Any) -> jax.Array:
        return value_of(".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys))

    pure = jax.tree_util.tree_map_with_path(value_at, nnx.to_pure_dict(abstract_state))
    state = jax.tree.map(lambda x: x, abstract_state)
    nnx.replace_by_pure_dict(state, pure)
    return state


def load_module(
    make: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    rules: Sequence[Rule] = (MIRROR,),
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
    place: Callable[[nnx.State], Any] | None = None,
) -> nnx.Module:
    """Builds ``make()`` abstractly (no allocation), fills it from ``tensors`` and returns the module.
    ``place``: abstract state -> the shardings its parameters are built on (:func:`convert_tensors`)."""
    abstract = nnx.eval_shape(make)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = None if place is None else place(abstract_state)
    state = convert_tensors(tensors, rules, abstract_state, ignore=ignore, source=source, shardings=shardings)
    return nnx.merge(graphdef, state)
