"""``train(config, workdir)``: the training loop with sharding, checkpoints, resume and logging."""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from flextok_jax import data as data_lib
from flextok_jax import parallel
from flextok_jax.train import grid as grid_lib
from flextok_jax.train.build import build
from flextok_jax.train.checkpoint import Checkpointer, export_ema_params
from flextok_jax.train.metrics import MetricsLogger
from flextok_jax.train.optimizer import make_optimizer
from flextok_jax.train.sharding import create_train_state, jit_train_step, state_shardings
from flextok_jax.train.step import make_train_step


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


class _StopFlag:
    """Set by SIGTERM (preemption); the loop checkpoints and returns at the next step boundary."""

    def __init__(self) -> None:
        self.stop = False
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.stop
        return bool(np.max(multihost_utils.process_allgather(np.int32(self.stop))))


def _to_host(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    source: Sequence[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Train (or resume from ``WORKDIR/checkpoints``) up to ``train.total_steps``.

    Stops early after ``train.stop_at_step`` if set, or on SIGTERM, in both cases with a
    checkpoint. ``source`` replaces ``get_source(config.data)`` (a random-access sequence of
    records). Returns the metrics of the last step, plus ``step`` and ``preempted``.
    Raises ``TrainingDivergedError`` on a non-finite loss, leaving the last good checkpoint.
    """
    parallel.initialize_distributed()
    workdir = os.path.abspath(os.fspath(workdir))
    cfg_t = config.train
    total_steps = int(cfg_t.total_steps)
    stop_at = min(total_steps, int(cfg_t.get("stop_at_step") or total_steps))

    setup = build(config)
    model, hp = setup.model, setup.hp
    tx, schedule = make_optimizer(config.optimizer, total_steps)
    mesh = parallel.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axis_names))
    rules = tuple(tuple(r) for r in config.sharding.rules)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                        async_save=config.checkpoint.get("async", True))
    meta = {"model_config": model.config.to_dict()}
    data_state = None
    if ckpt.latest_step() is not None:
        abstract, shardings = state_shardings(model, tx, hp, mesh, rules)
        state, data_state, _ = ckpt.restore(abstract)
    else:
        state, shardings = create_train_state(model, tx, hp, mesh, rules, int(cfg_t.seed), setup.init_params)
    start = int(jax.device_get(state.step))

    dcfg = config.data
    skips = data_lib.SkipCounter()
    dataset = data_lib.make_dataset(
        source if source is not None else data_lib.get_source(dcfg),
        image_size=int(dcfg.image_size), global_batch_size=int(cfg_t.global_batch_size),
        seed=int(dcfg.seed), shuffle=True, num_epochs=None, worker_count=int(dcfg.get("worker_count", 0)),
        random_crop=bool(dcfg.get("random_crop", True)), flip=bool(dcfg.get("flip", True)), skip_counter=skips,
    )
    data_iter = iter(dataset)
    if data_state is not None:
        data_iter.set_state(data_state)

    train_step = jit_train_step(make_train_step(model, tx, hp, schedule, setup.teacher), mesh, rules, shardings)
    log_cfg = config.log
    grid_every = int(log_cfg.get("grid_every_steps") or 0)
    reconstruct = (
        grid_lib.make_reconstruct_fn(model, mesh, rules, int(log_cfg.grid_images), int(log_cfg.grid_sample_steps))
        if grid_every else None
    )
    logger = MetricsLogger(workdir, total_steps, start, progress=bool(log_cfg.get("progress", True)))
    ckpt_every = int(config.checkpoint.every_steps)
    log_every = int(log_cfg.every_steps)

    last: dict[str, float] = {}
    pending: list[tuple[int, dict[str, jax.Array]]] = []  # (step after update, device metrics)
    last_saved = start if ckpt.latest_step() == start else None
    t_last, steps_since = time.time(), 0
    grid_batch = None
    preempted = False

    def drain() -> None:
        # Reading metrics one step late keeps the device busy while the host checks them.
        nonlocal last, t_last, steps_since
        while pending:
            step_done, m = pending.pop(0)
            host = _to_host(m)
            if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
                ckpt.wait()
                good = ckpt.latest_step()
                raise TrainingDivergedError(
                    f"non-finite loss {host['loss']} / grad_norm {host['grad_norm']} at step {step_done}; "
                    f"stopped without saving this state. Last good checkpoint: "
                    f"{'none' if good is None else f'step {good}'} in {ckpt.directory}. "
                    "Lower optimizer.lr or raise optimizer.warmup_steps and rerun to resume from it."
                )
            last = host
            if step_done % log_every == 0 or step_done == stop_at:
                now = time.time()
                host = dict(host)
                host["images_per_s"] = steps_since * cfg_t.global_batch_size / max(now - t_last, 1e-9)
                host["data/skipped"] = skips.count
                t_last, steps_since = now, 0
                logger.log(step_done, host)

    def save(state) -> None:
        nonlocal last_saved
        drain()
        ckpt.save(state, data_iter.get_state(), meta)
        last_saved = int(jax.device_get(state.step))

    try:
        with _StopFlag() as flag:
            for step in range(start, stop_at):
                batch = next(data_iter)
                gbatch = data_lib.to_global_batch({"image": batch["image"]}, mesh)
                if reconstruct is not None and grid_batch is None:
                    grid_batch = grid_lib.first_images(gbatch["image"], int(log_cfg.grid_images), mesh)
                state, metrics = train_step(state, gbatch)
                if len(pending) > 0:
                    drain()
                pending.append((step + 1, metrics))
                steps_since += 1
                logger.advance()
                done = step + 1
                if reconstruct is not None and done % grid_every == 0:
                    params = {**state.params, **state.frozen}
                    cols = np.asarray(reconstruct(params, grid_batch, jax.random.key(done)))
                    image = grid_lib.grid_image(cols)
                    if jax.process_index() == 0:
                        grid_lib.save_png(os.path.join(workdir, "grids", f"step_{done:08d}.png"), image)
                    logger.image("reconstructions", image, done)
                if done % ckpt_every == 0:
                    save(state)
                if flag.any_process():
                    preempted = done < stop_at
                    logger.message(f"SIGTERM: saving a checkpoint at step {done} and stopping")
                    break
        drain()
        final_step = int(jax.device_get(state.step))
        if last_saved != final_step:
            save(state)
        ckpt.wait()
        if final_step >= total_steps:
            export_ema_params(os.path.join(workdir, "export"), state, model.config)
    finally:
        ckpt.close()
        logger.close()
    return {**last, "step": final_step, "preempted": preempted, "data/skipped": skips.count}
