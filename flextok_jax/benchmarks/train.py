"""Timing of one compiled train step, for ``python -m flextok_jax.benchmarks``."""
from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from flextok_jax import parallel
from flextok_jax.benchmarks.timing import compiled_flops, median_seconds
from flextok_jax.train.build import build
from flextok_jax.train.optimizer import make_optimizer
from flextok_jax.train.sharding import create_train_state, jit_train_step
from flextok_jax.train.step import make_train_step


def benchmark_train_step(
    config: ml_collections.ConfigDict, batch: dict[str, Any] | None = None, steps: int = 10
) -> dict[str, float]:
    """Time the jitted train step of ``config`` on its mesh (all local devices by default).

    batch: {"image": [B, H, W, 3] in [-1, 1]} (host or global array); default: uniform noise of
    ``train.global_batch_size`` images of ``data.image_size``. Returns images_per_s, step_s
    (median of ``steps`` timed steps after one warm-up step), flops_per_step (XLA cost analysis,
    summed over devices; nan if unavailable), compile_s and num_params (trainable).
    """
    setup = build(config)
    tx, schedule = make_optimizer(config.optimizer, int(config.train.total_steps))
    mesh = parallel.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axis_names))
    rules = tuple(tuple(r) for r in config.sharding.rules)
    state, shardings = create_train_state(setup.model, tx, setup.hp, mesh, rules, 0, setup.init_params)
    if batch is None:
        b, s = int(config.train.global_batch_size), int(config.data.image_size)
        images = np.random.default_rng(0).uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
    else:
        images = batch["image"]
    batch = {"image": jax.device_put(images, parallel.batch_sharding(mesh))}

    step = jit_train_step(make_train_step(setup.model, tx, setup.hp, schedule, setup.teacher), mesh, rules, shardings)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0

    def run() -> Any:
        nonlocal state  # donated: every step consumes the previous state
        state, metrics = compiled(state, batch)
        return metrics

    step_s = median_seconds(run, steps, budget_s=float("inf"))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {
        "images_per_s": images.shape[0] / step_s,
        "step_s": step_s,
        "flops_per_step": compiled_flops(compiled),
        "compile_s": compile_s,
        "num_params": float(num_params),
    }
