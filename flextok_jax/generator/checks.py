"""Validation of the generator's inputs: each error names the value found and the range expected.

Value checks need concrete arrays; under a jit trace only shapes and dtypes are checked.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from flextok_jax.generator.config import GeneratorConfig


def is_concrete(*xs: Any) -> bool:
    """True when no argument is a tracer (so its values can be read)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _integer(x: Any, name: str, ndim: int) -> None:
    shape = np.shape(x)
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if len(shape) != ndim or not np.issubdtype(dtype, np.integer):
        want = "[B]" if ndim == 1 else "[B, T]"
        raise ValueError(f"{name} must be an int array {want}, got shape {tuple(shape)} dtype {dtype}")


def _out_of_range(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The distinct values of ``values`` outside [lo, hi] (a few, for the message)."""
    return np.unique(values[(values < lo) | (values > hi)])[:4]


def check_labels(cfg: GeneratorConfig, labels: Any) -> None:
    """labels: int [B] in [0, num_classes] (num_classes is the null row)."""
    _integer(labels, "labels", 1)
    if is_concrete(labels):
        bad = _out_of_range(np.asarray(labels), 0, cfg.num_classes)
        if bad.size:
            raise ValueError(
                f"labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = the null class), got {bad.tolist()}"
            )


def check_tokens(cfg: GeneratorConfig, tokens: Any, batch: int) -> None:
    """tokens: int [batch, T] with 1 <= T <= max_tokens and ids in [0, num_ids) (vocab_size, plus
    the EOS id for a model with one)."""
    _integer(tokens, "tokens", 2)
    b, t = np.shape(tokens)
    if b != batch:
        raise ValueError(f"tokens has batch {b} but labels has {batch}")
    if not 1 <= t <= cfg.max_tokens:
        raise ValueError(f"tokens has {t} positions per image; expected 1..{cfg.max_tokens} (max_tokens)")
    if is_concrete(tokens):
        bad = _out_of_range(np.asarray(tokens), 0, cfg.num_ids - 1)
        if bad.size:
            what = "vocab_size + EOS" if cfg.eos else "vocab_size"
            raise ValueError(f"token ids must lie in [0, {cfg.num_ids}) ({what}), got {bad.tolist()}")


def check_num_tokens(cfg: GeneratorConfig, num_tokens: Any, batch: int) -> np.ndarray:
    """num_tokens: an int or an int array [batch], each in [1, max_tokens]. Returns int32 [batch]."""
    k = np.asarray(num_tokens)
    if not np.issubdtype(k.dtype, np.integer):
        raise TypeError(f"num_tokens must be an int or an int array [B], got dtype {k.dtype}")
    if k.ndim > 1 or (k.ndim == 1 and k.shape[0] != batch):
        raise ValueError(f"num_tokens must be an int or an int array of shape [{batch}], got shape {k.shape}")
    bad = _out_of_range(k.reshape(-1), 1, cfg.max_tokens)
    if bad.size:
        raise ValueError(f"num_tokens must lie in [1, {cfg.max_tokens}] (max_tokens), got {bad.tolist()}")
    return np.broadcast_to(k, (batch,)).astype(np.int32)


def check_sampling(cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    """cfg_scale >= 0, temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), 0 < top_p <= 1."""
    if not float(cfg_scale) >= 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if not float(temperature) >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if int(top_k) != top_k or int(top_k) < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = no top-k filter), got {top_k}")
    if not 0 < float(top_p) <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (1 = no nucleus filter), got {top_p}")


def check_cache_chunk(chunk: int) -> None:
    """The sampler's cache segment length: an int >= 0 (0 = one cache of the full length)."""
    if int(chunk) != chunk or int(chunk) < 0:
        raise ValueError(f"cache_chunk must be an int >= 0 (0 = one cache of the full length), got {chunk}")
