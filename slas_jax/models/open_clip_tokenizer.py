"""open_clip's CLIP tokenizer (``open_clip.tokenize``, the one HPSv2 scores with), from the BPE files that
Hugging Face CLIP repositories publish (vocab.json + merges.txt, e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K).

Layout of each row: the start token, the prompt's byte-level BPE tokens, the end token, zeros up to the
context length; a longer prompt is cut and its last kept position becomes the end token. Prompts are cleaned
as open_clip does: ftfy's ``fix_text``, HTML entities unescaped twice, whitespace collapsed, lower case.
transformers' CLIPTokenizer differs (it pads with the end token and does not unescape HTML), hence this one.
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import regex

from slas_jax.models.conversion import ConversionError

# vocab.json's names of CLIP's special tokens, and the spelling open_clip's pattern recognises in prompts.
_START, _END = "<|startoftext|>", "<|endoftext|>"
_OPEN_CLIP_SPECIAL = ("<start_of_text>", "<end_of_text>")
_PATTERN = r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


@cache
def _byte_symbols() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values onto printable characters (the BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = (b for b in range(256) if b not in printable)
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + i) for i, b in enumerate(extra)},
    }


def _fix_text():
    try:
        import ftfy
    except ImportError as e:
        raise ConversionError(
            "open_clip's tokenizer cleans prompts with ftfy, which is not installed: pip install ftfy"
        ) from e
    return ftfy.fix_text


class OpenCLIPTokenizer:
    """prompts -> (n, context_length) int32 token ids, as ``open_clip.tokenize(prompts, context_length)``."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], context_length: int = 77):
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.start, self.end = vocab[_START], vocab[_END]
        self.special = dict(zip(_OPEN_CLIP_SPECIAL, (self.start, self.end), strict=True))
        self.context_length = context_length
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self.fix_text = _fix_text()
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, context_length: int = 77) -> OpenCLIPTokenizer:
        """Reads ``folder``/vocab.json (token -> id) and ``folder``/merges.txt (a "#version" line, then one
        merge per line in rank order)."""
        folder = Path(folder)
        try:
            vocab = json.loads((folder / "vocab.json").read_text())
            lines = (folder / "merges.txt").read_text().splitlines()
        except (OSError, ValueError) as e:
            raise ConversionError(
                f"{folder}: unreadable tokenizer files vocab.json / merges.txt ({e})"
            ) from e
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        if not isinstance(vocab, dict) or _START not in vocab or _END not in vocab:
            raise ConversionError(
                f"{folder}/vocab.json has no {_START} / {_END} tokens: not a CLIP vocabulary"
            )
        if any(len(pair) != 2 for pair in merges):
            raise ConversionError(f"{folder}/merges.txt: every line after the first must hold two symbols")
        return cls(vocab, merges, context_length)

    def _bpe(self, word: str) -> list[str]:
        """Byte-level BPE of one pre-tokenised word (its characters already byte symbols): merges the pair
        of lowest rank until none applies; the last symbol carries the end-of-word mark."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best = min(itertools.pairwise(parts), key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        """One prompt's token ids, without start / end tokens."""
        text = html.unescape(html.unescape(self.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for piece in self.pattern.findall(text):
            if piece in self.special:
                ids.append(self.special[piece])
                continue
            if piece not in self.cache:
                symbols = "".join(_byte_symbols()[b] for b in piece.encode("utf-8"))
                self.cache[piece] = [self.vocab[token] for token in self._bpe(symbols)]
            ids.extend(self.cache[piece])
        return ids

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), context_length) int32: start, tokens, end, zero padding (cut prompts end on end)."""
        out = np.zeros((len(prompts), self.context_length), np.int32)
        for row, prompt in enumerate(prompts):
            ids = [self.start, *self.encode(prompt), self.end][: self.context_length]
            ids[-1] = self.end
            out[row, : len(ids)] = ids
        return out
