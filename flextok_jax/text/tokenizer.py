"""WordPiece tokenisation with the HF ``tokenizers`` package, from a model's tokenizer.json.

The tokenizer.json of all-MiniLM-L6-v2 pads every text to 128 tokens and truncates at 128. Its
normalisation (lowercasing, accent stripping), WordPiece and [CLS] ... [SEP] template are used as
the file configures them, but its padding and truncation are replaced: a batch is padded to its
longest text (or to a fixed ``max_length``, for static shapes under jit) and truncated only at an
explicit limit, with a warning.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import tokenizers


class TextTokenizer:
    """Texts -> (ids int32 [B, L], mask int32 [B, L]) with right padding (mask 0 = padding)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, max_tokens: int, source: str = "tokenizer"):
        """``max_tokens``: the longest sequence the model accepts (texts beyond it are truncated)."""
        # Our own copy: padding and truncation are set per call below.
        self._tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        padding = self._tok.padding
        if padding is not None:
            self.pad_id, self.pad_token = int(padding["pad_id"]), padding["pad_token"]
        else:
            pad_id = self._tok.token_to_id("[PAD]")
            if pad_id is None:
                raise ValueError(f"{source}: no padding configured and no [PAD] token in the vocabulary")
            self.pad_id, self.pad_token = pad_id, "[PAD]"
        self.max_tokens = max_tokens
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.source = source

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_tokens: int) -> "TextTokenizer":
        """Load a tokenizer.json (a JSON description; nothing in it is executed)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(tokenizers.Tokenizer.from_file(path), max_tokens, source=path)

    def encode(
        self, texts: Sequence[str], max_length: int | None = None, truncate: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise ``texts``.

        max_length None: pad to the longest text, truncating texts longer than ``max_tokens``;
        an int: every row has exactly ``max_length`` tokens (padded or truncated). Truncation
        keeps [CLS] ... [SEP] and warns; with ``truncate=False`` it raises instead.
        Returns (ids, mask), both int32 [B, L]; mask is 1 on real tokens, 0 on padding.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
        if not texts:
            raise ValueError("texts is empty")
        limit = self.max_tokens if max_length is None else max_length
        if not 2 <= limit <= self.max_tokens:
            raise ValueError(f"max_length {max_length} outside [2, {self.max_tokens}] (room for [CLS] and [SEP])")
        self._tok.enable_truncation(limit)
        self._tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token, length=max_length)
        encodings = self._tok.encode_batch(list(texts))
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        if cut:
            message = f"{len(cut)} of {len(texts)} texts exceed {limit} tokens (e.g. text {cut[0]}) and were truncated"
            if not truncate:
                raise ValueError(message.replace("were truncated", "and truncate=False"))
            warnings.warn(message, stacklevel=2)
        ids = np.asarray([e.ids for e in encodings], np.int32)
        mask = np.asarray([e.attention_mask for e in encodings], np.int32)
        return ids, mask
