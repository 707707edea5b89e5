"""The shapes testbed's prompt sets as TFDS prompt sets (``slas_jax.data.prompts``), and prompt source
"shapes" serving them to the trainer as a seeded, resumable stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slas_jax.data.geneval import TAG_KEY, TAGS
from slas_jax.data.prompts import PromptRecord, batch_at, prompt_source
from slas_jax.data.sources import register_source
from slas_jax.testbed.ground_truth import SPEC_KEY
from slas_jax.testbed.shapes import VOCABULARY, encode_specs, split_specs


def shapes_records(split: str) -> list[PromptRecord]:
    """The shapes testbed's "train" or "held_out" prompts, with GenEval-layout metadata."""
    return [PromptRecord(s.prompt, s.to_geneval()) for s in split_specs(split)]


@register_source("shapes")
class ShapesPrompts:
    """The shapes testbed as a prompt source: ``split`` "train" or "held_out", stored as TFDS under
    ``data_dir`` on first use; batch(start, size) -> (prompts, {"shapes_spec": (size, MAX_CLAUSES,
    CLAUSE_FIELDS) int32, "geneval_tag": (size,) int32 category indices into ``data.geneval.TAGS``}) for the
    "shapes" reward and the benchmarks, in the seeded epoch order of ``batch_at``; len(): the split's size."""

    vocabulary = VOCABULARY
    arrays = (SPEC_KEY, TAG_KEY)

    def __init__(self, split: str = "train", data_dir: str = "~/tensorflow_datasets", seed: int = 0):
        self.source = prompt_source(f"shapes_{split}", shapes_records(split), Path(data_dir).expanduser())
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, start: int, size: int) -> tuple[list[str], dict[str, np.ndarray]]:
        """Prompts at stream positions start .. start + size - 1 and their encoded metadata."""
        prompts = batch_at(self.source, size, start, seed=self.seed)
        tags = np.asarray([TAGS.index(m["tag"]) for m in prompts.metadata], np.int32)
        return prompts.prompts, {SPEC_KEY: encode_specs(prompts.metadata), TAG_KEY: tags}
