"""WORKDIR/features/: finished shards of features, one npz per (image set, shard), for resuming.

Layout::

    plan.json                              the settings the shards were computed with
    {set}-{s:05d}-of-{n:05d}.npz           features float32 [m, D] (+ logits [m, C]) of shard s

A set is one kind of image (``real``, ``k=4``, ``k=4_cfg=3``); shard s covers sample indices
[s * shard_size, (s + 1) * shard_size). Each file is written to a temporary name and renamed
when complete, so a file that exists is final; one that cannot be read (or has the wrong shape)
is reported by name and computed again. A rerun with other settings than the plan's is refused.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import warnings
import zipfile
from typing import Any

import numpy as np

PLAN_NAME = "plan.json"


class CorruptShardWarning(UserWarning):
    """A feature shard file exists but cannot be used; it is computed again."""


def set_file_name(name: str) -> str:
    """A set name -> a safe file-name stem (``k=4_cfg=3.0`` stays, other characters become '_')."""
    return re.sub(r"[^A-Za-z0-9=._-]", "_", name)


class FeatureStore:
    """The shard files of one evaluation in ``folder`` (WORKDIR/features)."""

    def __init__(self, folder: str | os.PathLike, plan: dict[str, Any]) -> None:
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_or_write_plan(json.loads(json.dumps(plan)))

    def _check_or_write_plan(self, plan: dict[str, Any]) -> None:
        path = self.folder / PLAN_NAME
        if path.exists():
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            if diff:
                details = "; ".join(f"{k}: found {old.get(k)!r}, this run {plan.get(k)!r}" for k in diff)
                raise ValueError(f"{self.folder} holds features of other settings ({path}): {details}. "
                                 "Use a new workdir.")
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(plan, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def path(self, name: str, shard: int, num_shards: int) -> pathlib.Path:
        return self.folder / f"{set_file_name(name)}-{shard:05d}-of-{num_shards:05d}.npz"

    def load(self, name: str, shard: int, num_shards: int, dim: int, with_logits: bool) -> dict[str, np.ndarray] | None:
        """The shard's arrays, or None if it is not there yet. An unreadable or mis-shaped file is
        reported (``CorruptShardWarning`` naming it) and treated as missing."""
        path = self.path(name, shard, num_shards)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                out = {key: f[key] for key in (("features", "logits") if with_logits else ("features",))}
            feats = out["features"]
            if feats.ndim != 2 or feats.shape[1] != dim or feats.dtype != np.float32:
                raise ValueError(f"features are {feats.dtype} {feats.shape}, expected float32 [m, {dim}]")
            if with_logits and out["logits"].shape[0] != feats.shape[0]:
                raise ValueError(f"logits {out['logits'].shape} do not match features {feats.shape}")
            if not np.all(np.isfinite(feats)):
                raise ValueError("features have non-finite entries")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            warnings.warn(f"feature shard {path} is unreadable ({type(e).__name__}: {e}); computing it again",
                          CorruptShardWarning, stacklevel=2)
            return None
        return out

    def save(self, name: str, shard: int, num_shards: int, features: np.ndarray, logits: np.ndarray | None) -> None:
        """Write the shard atomically (temporary file, then rename)."""
        path = self.path(name, shard, num_shards)
        arrays = {"features": np.asarray(features, np.float32)}
        if logits is not None:
            arrays["logits"] = np.asarray(logits, np.float32)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
