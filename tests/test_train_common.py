"""Shared pieces of the training tests: a small tiny_cpu config and metric readers."""
from __future__ import annotations

import json
import os
import pathlib
import sys

import tempfile

import jax
import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
# configs/ is a top-level folder of the repo, not an installed package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from configs import tiny_cpu  # noqa: E402

# Many tests compile the same tiny train step (same config and mesh): a persistent compilation
# cache shared by this session and its subprocesses compiles each one once.
COMPILATION_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="flextok_jit_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def small_config(**train_overrides) -> ml_collections.ConfigDict:
    """tiny_cpu with logging every step, no grids or progress bar, sync checkpoints."""
    c = tiny_cpu.get_config()
    c.train.total_steps = 12
    c.train.global_batch_size = 16
    c.optimizer.warmup_steps = 2
    c.log.every_steps = 1
    c.log.grid_every_steps = 0
    c.log.progress = False
    c.checkpoint.every_steps = 3
    c.checkpoint.keep = 10
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


def losses(workdir: str | os.PathLike) -> dict[int, float]:
    """step -> loss from WORKDIR/metrics.jsonl (a later line for a step wins)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["loss"]
    return out
