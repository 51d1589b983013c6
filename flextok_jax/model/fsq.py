"""Finite scalar quantisation (FSQ): bound, round with a straight-through gradient, codes <-> ids.

Conventions (parity README section 5): for a dimension with L levels,
``half = (L-1)*1.001/2``, ``off = 0.5`` for even L else 0, ``bounded = tanh(z + atanh(off/half))*half - off``,
``code = round_half_even(bounded) / (L//2)``. Token ids are mixed-radix numbers whose first
code dimension is the least significant digit.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-3


def _level_constants(levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lv = np.asarray(levels, dtype=np.int64)
    if lv.ndim != 1 or lv.size == 0 or (lv < 2).any():
        raise ValueError(f"FSQ levels must be a non-empty list of ints >= 2, got {list(levels)}")
    half = ((lv - 1) * (1 + _EPS) / 2).astype(np.float32)
    offset = np.where(lv % 2 == 0, 0.5, 0.0).astype(np.float32)
    shift = np.arctanh(offset / half).astype(np.float32)
    half_width = (lv // 2).astype(np.float32)
    return half, offset, shift, half_width


def codebook_size(levels: Sequence[int]) -> int:
    """Number of distinct token ids, prod(levels)."""
    return int(np.prod(np.asarray(levels, dtype=np.int64)))


def fsq_bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Squash z [..., len(levels)] so that rounding yields exactly L values per dimension."""
    half, offset, shift, _ = _level_constants(levels)
    z = z.astype(jnp.float32)
    return jnp.tanh(z + shift) * half - offset


def fsq_quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
    """z [..., d] -> codes [..., d] in [-1, 1]; the gradient passes straight through the rounding."""
    bounded = fsq_bound(z, levels)
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    _, _, _, half_width = _level_constants(levels)
    return rounded / half_width


def fsq_saturation(z: jax.Array, levels: Sequence[int], margin: float = 2.0) -> jax.Array:
    """Mean squared excess of the tanh argument ``|z + shift|`` over ``margin``: a scalar that is
    zero while every dimension stays where tanh still has a gradient (tanh'(2) = 0.07).

    A dimension pushed past it always rounds to its extreme level and, through the saturated
    tanh, gets almost no gradient back: it is dead. Penalising the excess revives it."""
    _, _, shift, _ = _level_constants(levels)
    excess = jax.nn.relu(jnp.abs(z.astype(jnp.float32) + shift) - margin)
    return jnp.mean(jnp.square(excess))


def codes_to_ids(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """codes [..., d] (values k/(L//2)) -> int32 ids [...]."""
    _, _, _, half_width = _level_constants(levels)
    basis = np.cumprod([1] + list(levels[:-1])).astype(np.int32)
    digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
    return (digits * basis).sum(-1).astype(jnp.int32)


def ids_to_codes(ids: jax.Array, levels: Sequence[int]) -> jax.Array:
    """int ids [...] -> float32 codes [..., d]; the exact inverse of ``codes_to_ids``."""
    _, _, _, half_width = _level_constants(levels)
    lv = np.asarray(levels, dtype=np.int32)
    basis = np.cumprod([1] + list(levels[:-1])).astype(np.int32)
    digits = (ids[..., None].astype(jnp.int32) // basis) % lv
    return (digits.astype(jnp.float32) - half_width) / half_width
