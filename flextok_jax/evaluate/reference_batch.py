"""Reference / sample batches in the ADM evaluator's npz format.

Keys: ``arr_0`` uint8 images [N, H, W, 3]; ``mu`` [D] and ``sigma`` [D, D] pool3 statistics;
optionally ``mu_s`` / ``sigma_s`` (spatial statistics). Files are read with
``allow_pickle=False``; images can be streamed in batches without loading the whole array.
Note: statistics stored by ADM were computed with the TF Inception graph, whose resize differs
from pytorch-fid's; for comparable FIDs recompute the reference statistics from ``arr_0`` with
the same network used for the samples.
"""
from __future__ import annotations

import os
import zipfile
from typing import Iterator, Sequence

import numpy as np

from flextok_jax.evaluate.fid import FeatureStats

IMAGES = "arr_0"
_STATS_PAIRS = (("mu", "sigma"), ("mu_s", "sigma_s"))


def _check(path: str, name: str, value: np.ndarray, found: dict[str, np.ndarray]) -> None:
    if name == IMAGES:
        if value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
            raise ValueError(f"{path}: {IMAGES} must be uint8 [N, H, W, 3], got {value.dtype} {value.shape}")
        return
    if value.dtype.kind != "f":
        raise ValueError(f"{path}: {name} must be floating point, got {value.dtype}")
    for mu, sigma in _STATS_PAIRS:
        if name == mu and value.ndim != 1:
            raise ValueError(f"{path}: {mu} must be [D], got shape {value.shape}")
        if name == sigma:
            d = found[mu].shape[0] if mu in found else value.shape[0]
            if value.shape != (d, d):
                raise ValueError(f"{path}: {sigma} has shape {value.shape}, expected ({d}, {d}) to match {mu}")


def load_reference_batch(path: str | os.PathLike, keys: Sequence[str] = ("mu", "sigma")) -> dict[str, np.ndarray]:
    """The requested arrays of an ADM-format npz, validated (dtype, rank, matching sizes).

    Raises ``KeyError`` naming the file, the missing key and the keys present.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no reference batch at {path}")
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as f:
        # mu before sigma so that sigma's size is checked against it.
        for name in sorted(keys, key=lambda k: k.startswith("sigma")):
            if name not in f.files:
                raise KeyError(f"{path}: no array {name!r} (present: {sorted(f.files)})")
            out[name] = f[name]
            _check(path, name, out[name], out)
    return out


def load_reference_stats(path: str | os.PathLike, spatial: bool = False) -> FeatureStats:
    """``mu`` / ``sigma`` (or ``mu_s`` / ``sigma_s``) of an ADM-format npz as ``FeatureStats``
    (count -1: ADM files do not record it)."""
    mu, sigma = _STATS_PAIRS[1 if spatial else 0]
    arrays = load_reference_batch(path, (mu, sigma))
    return FeatureStats(arrays[mu].astype(np.float64), arrays[sigma].astype(np.float64), -1)


def save_reference_batch(
    path: str | os.PathLike, images: np.ndarray | None = None, stats: FeatureStats | None = None
) -> None:
    """Write ``arr_0`` (uint8 [N, H, W, 3]) and/or ``mu`` / ``sigma`` to an (uncompressed) npz, atomically."""
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    if images is not None:
        arrays[IMAGES] = np.asarray(images)
    if stats is not None:
        arrays["mu"], arrays["sigma"] = np.asarray(stats.mean), np.asarray(stats.cov)
    if not arrays:
        raise ValueError("save_reference_batch needs images and/or stats")
    for name, value in arrays.items():
        _check(path, name, value, arrays)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def iter_reference_images(path: str | os.PathLike, batch_size: int) -> Iterator[np.ndarray]:
    """``arr_0`` in batches of up to ``batch_size`` images, read from the zip member as a stream."""
    path = os.fspath(path)
    with zipfile.ZipFile(path) as zf:
        member = IMAGES + ".npy"
        if member not in zf.namelist():
            raise KeyError(f"{path}: no array {IMAGES!r} (present: {sorted(n[:-4] for n in zf.namelist())})")
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
                raise ValueError(f"{path}: {IMAGES} must be C-order uint8 [N, H, W, 3], got {dtype} {shape}")
            per_image = int(np.prod(shape[1:]))
            for start in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - start)
                data = f.read(n * per_image)
                if len(data) != n * per_image:
                    raise ValueError(f"{path}: {IMAGES} ends after {start} images, header says {shape[0]}")
                yield np.frombuffer(data, np.uint8).reshape((n,) + tuple(shape[1:]))
