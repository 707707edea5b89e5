"""Tokenizers at the host edge: a word-level one for grammar-built testbeds, and the Hugging Face tokenizers
of real checkpoints (CLIPTokenizer, T5TokenizerFast) loaded from local folders.

Every tokenizer maps a list of prompts to a fixed-length (n, max_length) int32 array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Tokenize = Callable[[Sequence[str]], np.ndarray]


class WordTokenizer:
    """Whitespace word-level tokenizer over a closed vocabulary.

    ids: 0 pad, 1 bos, 2 unknown, 3 eos, then the vocabulary in the given order. Each prompt becomes
    [bos, words..., eos, pad...] of length ``max_length`` (longer prompts raise: a testbed prompt must fit).
    eos is deliberately not 2: a CLIP text config with eos_token_id 2 pools at the largest token id (the
    legacy OpenAI rule), any other id pools at the first eos, which is what a word vocabulary needs.
    """

    PAD, BOS, UNK, EOS = 0, 1, 2, 3

    def __init__(self, vocabulary: Sequence[str], max_length: int):
        self.words = tuple(dict.fromkeys(vocabulary))
        self.ids = {w: i + 4 for i, w in enumerate(self.words)}
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 4

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), max_length) int32."""
        out = np.full((len(prompts), self.max_length), self.PAD, np.int32)
        for row, prompt in enumerate(prompts):
            ids = [self.BOS, *(self.ids.get(w, self.UNK) for w in prompt.lower().split()), self.EOS]
            if len(ids) > self.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(ids)} tokens; the tokenizer holds {self.max_length}"
                )
            out[row, : len(ids)] = ids
        return out


def load_hf_tokenizer(folder: str | Path, *, kind: str, max_length: int) -> Tokenize:
    """A transformers tokenizer (kind "clip" or "t5") from a local folder, padded/truncated to max_length."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {folder} does not exist; expected the checkpoint's tokenizer files there "
            "(vocab.json + merges.txt for CLIP, spiece.model or tokenizer.json for T5)"
        )
    import transformers

    cls = transformers.CLIPTokenizer if kind == "clip" else transformers.T5TokenizerFast
    tokenizer = cls.from_pretrained(str(folder))

    def tokenize(prompts: Sequence[str]) -> np.ndarray:
        enc = tokenizer(
            list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="np"
        )
        return enc["input_ids"].astype(np.int32)

    return tokenize
