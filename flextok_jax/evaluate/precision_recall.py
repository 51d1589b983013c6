"""Improved precision and recall (Kynkäänniemi et al. 2019) as the ADM evaluator computes them.

Each set's manifold is the union of balls around its points, with radius the distance to the
point's k-th nearest neighbour in its own set (k = 3; the point itself is not counted).
Precision is the share of generated samples inside some ball of the real set, recall the share
of real samples inside some ball of the generated set. Distances are computed on device in
blocks of rows, in float32 as ||a||^2 - 2 a.b + ||b||^2 (ADM does the same, though it first
tries float16).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

ROW_BLOCK = 1024


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, D], [m, D] -> [n, m] squared Euclidean distances, float32, clipped at 0."""
    cross = jnp.einsum("nd,md->nm", a, b, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(a * a, axis=1)[:, None] - 2.0 * cross + jnp.sum(b * b, axis=1)[None, :]
    return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_neighbour(rows: jax.Array, points: jax.Array, k: int) -> jax.Array:
    # The k+1 smallest distances include the row's own 0.
    return -jax.lax.top_k(-_squared_distances(rows, points), k + 1)[0][:, k]


@jax.jit
def _inside_any(rows: jax.Array, centres: jax.Array, radii2: jax.Array) -> jax.Array:
    return jnp.any(_squared_distances(rows, centres) <= radii2[None, :], axis=1)


def _by_row_blocks(fn, rows: np.ndarray, *args, block: int) -> np.ndarray:
    """fn(row block, *args) over fixed-size blocks (the last one zero-padded: one compile)."""
    n = rows.shape[0]
    block = min(block, n)
    padded = np.zeros((-(-n // block) * block, rows.shape[1]), np.float32)
    padded[:n] = rows
    out = [np.asarray(fn(jnp.asarray(padded[i : i + block]), *args)) for i in range(0, padded.shape[0], block)]
    return np.concatenate(out)[:n]


def manifold_radii(features: np.ndarray, k: int = 3, block: int = ROW_BLOCK) -> np.ndarray:
    """features [N, D] -> squared distance of each point to its k-th nearest other point [N]."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[0] <= k:
        raise ValueError(f"features must be [N > k={k}, D], got shape {features.shape}")
    points = jnp.asarray(features)
    return _by_row_blocks(functools.partial(_kth_neighbour, k=k), features, points, block=block)


def coverage_of(queries: np.ndarray, centres: np.ndarray, radii2: np.ndarray, block: int = ROW_BLOCK) -> np.ndarray:
    """bool [Nq]: whether each query lies in some ball (centres [N, D], squared radii [N])."""
    return _by_row_blocks(
        _inside_any, np.asarray(queries, np.float32), jnp.asarray(centres, jnp.float32), jnp.asarray(radii2), block=block
    )


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = ROW_BLOCK) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` [M, D] against ``real`` [N, D]."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features must be [N, D] with the same D, got {real.shape} and {fake.shape}")
    precision = coverage_of(fake, real, manifold_radii(real, k, block), block).mean()
    recall = coverage_of(real, fake, manifold_radii(fake, k, block), block).mean()
    return float(precision), float(recall)
