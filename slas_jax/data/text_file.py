"""Prompt source "text_file": one prompt per line (e.g. HPDv2's prompt lists), as a resumable seeded stream.

The file is stored once as a TFDS prompt set under ``data_dir`` (see ``slas_jax.data.prompts``) and read
back in the seeded epoch order of ``batch_at``, so a resumed run sees exactly the batches it would have seen.
The set's name comes from the file's name and absolute path: the same file always maps to the same set, and
a file edited after a run started is refused (the stored set no longer matches) rather than silently read as
other prompts at the same stream positions.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from slas_jax.config import ConfigError
from slas_jax.data.prompts import batch_at, prompt_source, read_prompt_lines
from slas_jax.data.sources import register_source


def prompt_set_name(path: Path) -> str:
    """``text_<file stem>_<8 hex digits of the absolute path's sha256>``, lowercase, TFDS-safe."""
    stem = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_")[:40] or "prompts"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"text_{stem}_{digest}"


@register_source("text_file")
class TextFilePrompts:
    """Prompts from the text file ``path`` (one per non-empty line, surrounding whitespace stripped).

    batch(start, size) -> (prompts, {}): no per-prompt arrays (rewards that need some, e.g. CLIP-family
    rewards' tokens, prepare them themselves). vocabulary: the file's lowercase words, so a randomly
    initialised model's word-level tokenizer covers every prompt.
    """

    arrays = ()

    def __init__(self, path: str | None = None, seed: int = 0, data_dir: str = "~/tensorflow_datasets"):
        if not path:
            raise ConfigError(
                "config.data.options.path: set it to a text file with one prompt per line (e.g. HPDv2's prompts)"
            )
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"prompt file {file} does not exist; config.data.options.path needs a text file with one "
                "prompt per line"
            )
        try:
            records = read_prompt_lines(file)
            self.source = prompt_source(prompt_set_name(file), records, Path(data_dir).expanduser())
        except ValueError as e:
            # An empty or non-UTF-8 file, or one edited since its set was stored: the user must act on the file,
            # so it is reported as a config error (one line, exit code 2) rather than a traceback.
            raise ConfigError(f"config.data.options.path: {str(e).splitlines()[0]}") from e
        self.vocabulary = tuple(dict.fromkeys(w for r in records for w in r.prompt.lower().split()))
        self.seed = seed

    def batch(self, start: int, size: int) -> tuple[list[str], dict[str, np.ndarray]]:
        """The prompts at stream positions start .. start + size - 1 (epochs reshuffled by seed)."""
        return batch_at(self.source, size, start, seed=self.seed).prompts, {}
