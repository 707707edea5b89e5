"""Prompt sets as TensorFlow Datasets (array_record files, random access), and a deterministic, resumable,
per-host-sharded stream of prompt batches over them.

Every prompt set has the same three features: ``id`` (int64, the record's position in its source), ``prompt``
(text) and ``metadata`` (JSON text: GenEval metadata, UniGenBench++ test points, or {}); read back through
``tfds.data_source`` the text features come back as bytes. One builder class, ``PromptSet``, stores any list
of records; its config name is the set's name, so a set lives in ``<data_dir>/prompt_set/<name>/1.0.0/``.
Readers turn sources into records: ``read_prompt_lines`` (one prompt per line, e.g. HPDv2),
``read_geneval_jsonl`` (GenEval's evaluation_metadata.jsonl) and ``read_unigenbench_csv`` (UniGenBench++'s
CSVs); the shapes testbed adds its train / held-out sets (``slas_jax.testbed.prompts``). On a multi-host run, build each set once
before launching, or give every host its own ``data_dir``: tfds does not lock a folder against a concurrent build.

The stream: stream position p (0, 1, 2, ...) reads record perm_e[p mod n] with e = p // n the epoch and perm_e
a permutation seeded by (seed, e). A batch is addressed by the stream position of its first prompt, so a run
resumed at position p (prompts consumed so far) sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from slas_jax.data.geneval import PromptSpec

BUILDER_NAME = "prompt_set"
SPLIT = "prompts"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt and its JSON-serialisable metadata."""

    prompt: str
    metadata: Mapping[str, Any]


def fingerprint(records: Sequence[PromptRecord]) -> str:
    """sha256 of the records' prompts and metadata, in order: tells whether a stored set holds these records."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.prompt, r.metadata], sort_keys=True).encode())
    return digest.hexdigest()


class PromptSet(tfds.core.GeneratorBasedBuilder):
    """Any list of PromptRecords as a one-split ("prompts") array_record dataset, records in the given order."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for a checksums file beside the builder's source, which for a builder inside a package needs the
    # importlib_resources backport that tfds declares only for Python < 3.9. Prompt sets download nothing, so
    # there is no checksums file to find.
    code_path = None

    def __init__(self, *, records: Sequence[PromptRecord] = (), records_fingerprint: str = "", **kwargs: Any):
        self._records = records
        self._records_fingerprint = records_fingerprint
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Prompts with JSON metadata.",
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Scalar(np.int64),
                    "prompt": tfds.features.Text(),
                    "metadata": tfds.features.Text(),
                }
            ),
            # Keep the source order: record i is source line i, so ids and resumption are stable.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(fingerprint=self._records_fingerprint),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # the records are already in memory
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, record in enumerate(self._records):
            yield (
                i,
                {"id": i, "prompt": record.prompt, "metadata": json.dumps(record.metadata, sort_keys=True)},
            )


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS's progress bars and absl warnings off while a prompt set is stored: storing a prompt list takes a
    moment, and the bars would bury a one-line error that follows (e.g. a missing checkpoint)."""
    verbosity = logging.get_verbosity()
    tfds.display_progress_bar(False)
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        tfds.display_progress_bar(True)  # TFDS's default; it offers no getter for the current setting
        logging.set_verbosity(verbosity)


def prompt_source(
    name: str, records: Sequence[PromptRecord], data_dir: str | Path
) -> Sequence[dict[str, Any]]:
    """The prompt set ``name`` under ``data_dir``, built from ``records`` unless already there.

    Returns tfds's random-access source: len(), source[i] and source.__getitems__(indices) give dicts
    {"id": int, "prompt": bytes, "metadata": bytes (JSON)}. A stored set built from other records is an error
    rather than silently replaced, so a resumed run never reads different prompts at the same positions.
    """
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"prompt set name {name!r} must be lowercase letters, digits and underscores")
    if not records:
        raise ValueError(f"prompt set {name!r} has no prompts")
    expected = fingerprint(records)
    full_name = f"{BUILDER_NAME}/{name}"
    stored = Path(data_dir) / BUILDER_NAME / name / str(PromptSet.VERSION)
    with quiet_tfds():
        if not (stored / "dataset_info.json").exists():
            builder = PromptSet(
                config=tfds.core.BuilderConfig(name=name, description=f"prompt set {name}"),
                records=records,
                records_fingerprint=expected,
                data_dir=str(data_dir),
            )
            builder.download_and_prepare()
        found = tfds.builder(full_name, data_dir=str(data_dir)).info.metadata.get("fingerprint")
    if found != expected:
        raise ValueError(
            f"prompt set {name!r} in {stored} was built from other prompts; delete that folder or choose another name"
        )
    return tfds.data_source(full_name, split=SPLIT, data_dir=str(data_dir), download=False)


# ---------------------------------------------------------------------------------------------------------
# Readers


def _read_text(path: str | Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path.read_text(encoding="utf-8")


def read_prompt_lines(path: str | Path) -> list[PromptRecord]:
    """One prompt per non-empty line (HPDv2 prompt lists); metadata {}."""
    records = [PromptRecord(line.strip(), {}) for line in _read_text(path, "prompt file").splitlines()]
    records = [r for r in records if r.prompt]
    if not records:
        raise ValueError(f"prompt file {path} has no prompts; expected one prompt per line")
    return records


def read_geneval_jsonl(path: str | Path) -> list[PromptRecord]:
    """GenEval's evaluation_metadata.jsonl: one JSON object per line with "prompt", "tag", "include" and
    optionally "exclude"; the object is the record's metadata."""
    records = []
    for number, line in enumerate(_read_text(path, "GenEval metadata file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            metadata = json.loads(line)
            PromptSpec.from_geneval(metadata)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path} line {number}: {str(e).splitlines()[0]}") from e
        if not isinstance(metadata.get("prompt"), str):
            raise ValueError(f"{path} line {number}: needs a 'prompt' string")
        records.append(PromptRecord(metadata["prompt"], metadata))
    if not records:
        raise ValueError(f"GenEval metadata file {path} has no entries")
    return records


def read_unigenbench_csv(path: str | Path, prompt_column: str = "prompt_en") -> list[PromptRecord]:
    """A UniGenBench++ CSV (columns such as index, prompt_en, sub_dims_en): the prompt from ``prompt_column``,
    the other columns as metadata, JSON-decoded where they hold JSON (the test points)."""
    rows = list(csv.DictReader(_read_text(path, "UniGenBench++ CSV").splitlines()))
    if not rows or prompt_column not in rows[0]:
        columns = ", ".join(rows[0]) if rows else "none"
        raise ValueError(f"{path} has no column {prompt_column!r} (columns: {columns})")

    def decode(value: str) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            return value

    return [
        PromptRecord(row[prompt_column], {k: decode(v) for k, v in row.items() if k != prompt_column})
        for row in rows
    ]


# ---------------------------------------------------------------------------------------------------------
# Stream


@dataclass(frozen=True)
class PromptBatch:
    """One process's share of one global batch.

    index: stream position of the global batch's first prompt (the next batch starts at index + batch_size);
    ids: (local_batch,) int64 record ids; prompts: local_batch strings; metadata: local_batch parsed dicts.
    """

    index: int
    ids: np.ndarray
    prompts: list[str]
    metadata: list[dict[str, Any]]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_records)
    order.setflags(write=False)  # shared by the cache
    return order


def stream_records(num_records: int, positions: np.ndarray, seed: int) -> np.ndarray:
    """positions: (m,) int stream positions >= 0. Returns (m,) int64 record ids: each epoch of num_records
    positions visits every record once, in an order seeded by (seed, epoch)."""
    positions = np.asarray(positions, np.int64)
    epochs, offsets = np.divmod(positions, num_records)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        out[chosen] = _epoch_permutation(num_records, seed, int(epoch))[offsets[chosen]]
    return out


def batch_at(source: Sequence[dict[str, Any]], batch_size: int, index: int, *, seed: int) -> PromptBatch:
    """The batch of ``batch_size`` prompts at stream positions [index, index + batch_size) (on a pod each
    process then keeps its own rows: ``parallel.process_rows``)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size {batch_size} must be positive")
    if index < 0:
        raise ValueError(f"stream index {index} must be >= 0")
    ids = stream_records(len(source), np.arange(index, index + batch_size), seed)
    rows = source.__getitems__(ids.tolist())
    return PromptBatch(
        index=index,
        ids=ids,
        prompts=[row["prompt"].decode() for row in rows],
        metadata=[json.loads(row["metadata"]) for row in rows],
    )
