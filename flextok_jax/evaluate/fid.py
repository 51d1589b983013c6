"""Feature statistics and the Fréchet distance (FID with Inception features, FD-DINOv2 with DINOv2's).

Statistics are accumulated on device, per shard of the batch, in float32: each shard keeps the
sum of its features and the sum of their outer products, both centred on one fixed reference
vector (the mean of the first batch) so that the covariance is not the small difference of two
large float32 sums. Every ``flush_every`` updates, and at the end, the shards' sums move to the
host and are added up in float64; the mean and covariance are formed there.

The Fréchet distance uses tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): two symmetric
eigendecompositions in float64 instead of scipy's general (Schur) matrix square root.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flextok_jax.parallel import mesh_batch_axes


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Mean [D] and covariance [D, D] (ddof 1, as ``np.cov``) of ``count`` feature vectors, float64."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def feature_statistics(features: np.ndarray) -> FeatureStats:
    """Host statistics of features [N, D] in float64 (the reference the accumulator matches)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {x.shape}")
    return FeatureStats(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0])


class StatsAccumulator:
    """Running mean / covariance of features [B, D] sharded over the batch on ``mesh``.

    ``update(features, valid)`` adds a batch (``valid`` [B] bool marks real rows, e.g. to drop
    the padding of a last partial batch); ``result()`` returns ``FeatureStats``. Each device
    accumulates only its own rows (no cross-device reduction on device); the default mesh is the
    first device. ``batch_axes``: the mesh axes the batch is split over (default: those of
    ``parallel.BATCH_AXES`` the mesh has).
    """

    def __init__(self, dim: int, mesh: Mesh | None = None, batch_axes: Sequence[str] | None = None, flush_every: int = 64):
        if mesh is None:
            mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
        if batch_axes is None:
            batch_axes = mesh_batch_axes(mesh)
        unknown = [a for a in batch_axes if a not in mesh.axis_names]
        if unknown or not batch_axes:
            raise ValueError(f"batch axes {tuple(batch_axes)} must be non-empty axes of the mesh {mesh.axis_names}")
        self.dim, self.mesh, self.flush_every = dim, mesh, flush_every
        self.batch_axes = tuple(batch_axes)
        self.shards = int(np.prod([mesh.shape[a] for a in self.batch_axes]))
        self._rows = NamedSharding(mesh, P(self.batch_axes))
        self._update = jax.jit(
            jax.shard_map(
                _local_update,
                mesh=mesh,
                in_specs=(P(self.batch_axes),) * 3 + (P(), P(self.batch_axes), P(self.batch_axes)),
                out_specs=(P(self.batch_axes),) * 3,
            ),
            donate_argnums=(0, 1, 2),
        )
        self._ref: jax.Array | None = None
        self._host = (0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))
        self._pending = 0
        self._reset_device()

    def _reset_device(self) -> None:
        s, d = self.shards, self.dim
        self._count = jax.device_put(np.zeros((s,), np.int32), self._rows)
        self._sum = jax.device_put(np.zeros((s, d), np.float32), self._rows)
        self._outer = jax.device_put(np.zeros((s, d, d), np.float32), self._rows)

    def update(self, features: jax.Array, valid: jax.Array | None = None) -> None:
        """Add features [B, D] (B divisible by the number of batch shards); valid: bool [B]."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [B, {self.dim}], got shape {features.shape}")
        if features.shape[0] % self.shards:
            raise ValueError(f"batch {features.shape[0]} is not divisible by the {self.shards} batch shards")
        if valid is None:
            valid = jnp.ones(features.shape[:1], bool)
        if self._ref is None:
            # Any fixed vector near the mean removes the cancellation; the first batch's mean is one.
            w = valid.astype(jnp.float32)[:, None]
            ref = jnp.sum(features.astype(jnp.float32) * w, 0) / jnp.maximum(jnp.sum(w), 1.0)
            self._ref = jax.device_put(ref, NamedSharding(self.mesh, P()))
        self._count, self._sum, self._outer = self._update(self._count, self._sum, self._outer, self._ref, features, valid)
        self._pending += 1
        if self._pending >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        n, s, o = self._host
        count, total, outer = jax.device_get((self._count, self._sum, self._outer))
        self._host = (
            n + int(count.astype(np.int64).sum()),
            s + total.astype(np.float64).sum(0),
            o + outer.astype(np.float64).sum(0),
        )
        self._pending = 0
        self._reset_device()

    def result(self) -> FeatureStats:
        """Mean and covariance (ddof 1) of all valid rows so far, float64."""
        self._flush()
        n, s, o = self._host
        if n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {n}")
        ref = np.asarray(jax.device_get(self._ref), np.float64)
        cov = (o - np.outer(s, s) / n) / (n - 1)
        return FeatureStats(ref + s / n, cov, n)


def _local_update(count, total, outer, ref, x, valid):
    """One shard: count [1], total [1, D], outer [1, D, D], ref [D], x [b, D], valid [b]."""
    xc = jnp.where(valid[:, None], x.astype(jnp.float32) - ref, 0.0)
    gram = jnp.einsum("bi,bj->ij", xc, xc, precision=jax.lax.Precision.HIGHEST)
    return count + jnp.sum(valid, dtype=jnp.int32), total + jnp.sum(xc, 0)[None], outer + gram[None]


def _check_stats(mu1, sigma1, mu2, sigma2) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a, np.float64) for a in (mu1, sigma1, mu2, sigma2)]
    names = ("mu1", "sigma1", "mu2", "sigma2")
    d = arrays[0].shape[-1] if arrays[0].ndim == 1 else None
    for name, a in zip(names, arrays):
        want = (d,) if name.startswith("mu") else (d, d)
        if d is None or a.shape != want:
            raise ValueError(f"{name} has shape {a.shape}, expected {want} (mu1 is {arrays[0].shape})")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite entries")
    return tuple(arrays)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 @ sigma2) for symmetric PSD [D, D] matrices, float64.

    With sigma1 = V diag(l) V^T, the matrix diag(sqrt l) V^T sigma2 V diag(sqrt l) is similar to
    sqrt(sigma1) sigma2 sqrt(sigma1), hence symmetric PSD with the eigenvalues of sigma1 sigma2.
    Eigenvalues below the numerical rank threshold (D * eps * the largest) are round-off of true
    zeros (rank-deficient covariances, e.g. fewer samples than dimensions) and count as 0: their
    square roots would otherwise add ~sqrt(eps) each.
    """
    evals, evecs = np.linalg.eigh(sigma1)
    root = np.sqrt(np.clip(evals, 0.0, None))
    inner = root[:, None] * (evecs.T @ sigma2 @ evecs) * root[None, :]
    prod_evals = np.linalg.eigvalsh((inner + inner.T) / 2)
    cutoff = prod_evals.shape[0] * np.finfo(np.float64).eps * max(float(prod_evals.max()), 0.0)
    return float(np.sqrt(np.where(prod_evals > cutoff, prod_evals, 0.0)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) of two Gaussians ([D] means, [D, D] covs), float64."""
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def stats_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between two ``FeatureStats`` (FID for Inception pool3 features)."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
