"""Timing of one compiled train step, for ``python -m flextok_jax.benchmarks``."""
from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from flextok_jax import parallel
from flextok_jax.train.build import build
from flextok_jax.train.optimizer import make_optimizer
from flextok_jax.train.sharding import create_train_state
from flextok_jax.train.step import make_train_step


def benchmark_train_step(
    config: ml_collections.ConfigDict, batch: dict[str, Any] | None = None, steps: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Time the jitted train step of ``config`` on its mesh (all local devices by default).

    batch: {"image": [B, H, W, 3] in [-1, 1]} (host or global array); default: uniform noise of
    ``train.global_batch_size`` images of ``data.image_size``. Returns images_per_s, step_s
    (median of ``steps`` timed steps after ``warmup``), flops_per_step (XLA cost analysis, summed
    over devices; 0 if unavailable), compile_s and num_params (trainable).
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
    image_sharding = parallel.batch_sharding(mesh)
    images = jax.device_put(images, image_sharding)

    step_fn = make_train_step(setup.model, tx, setup.hp, schedule, setup.teacher)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t0 = time.perf_counter()
        compiled = jax.jit(
            step_fn,
            in_shardings=(shardings, {"image": image_sharding}),
            out_shardings=(shardings, NamedSharding(mesh, P())),
            donate_argnums=(0,),
        ).lower(state, {"image": images}).compile()
        compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", 0.0))

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, {"image": images})
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {
        "images_per_s": images.shape[0] / step_s,
        "step_s": step_s,
        "flops_per_step": flops,
        "compile_s": compile_s,
        "num_params": float(num_params),
    }
