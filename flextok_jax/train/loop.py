"""``train(config, workdir)``: the one training loop, for every task (``flextok_jax.train.task``).

Sharding, checkpoints, exact resume, preemption, NaN handling, metrics, TensorBoard and the
progress bar live here; a task brings only its parameters, loss and batches.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils

from flextok_jax import parallel
from flextok_jax.evaluate.grid import save_png
from flextok_jax.train.checkpoint import Checkpointer
from flextok_jax.train.metrics import MetricsLogger
from flextok_jax.train.setup import TrainSetup
from flextok_jax.train.state import TrainState


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


class Preemption:
    """Whether to checkpoint and stop now because the job is being preempted (SIGTERM).

    One process: a SIGTERM handler sets a flag. Several: JAX's preemption service (started by
    ``jax.distributed.initialize``) catches the signal on any host and agrees on one step at
    which every process sees ``reached(step)`` true, with no collective of ours per step.
    """

    def __init__(self) -> None:
        self._flag = False
        self._previous = None

    def __enter__(self) -> "Preemption":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self._flag = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._flag
        return multihost_utils.reached_preemption_sync_point(step)


class DeferredMetrics:
    """Each step's metrics, read one step late so the device keeps working while the host checks
    the previous step: non-finite loss or gradient -> ``TrainingDivergedError``; every
    ``log_every`` steps (and at ``final_step``) a row to the logger with throughput."""

    def __init__(self, logger: MetricsLogger, ckpt: Checkpointer, setup: TrainSetup, log_every: int, final_step: int):
        self.logger, self.ckpt, self.setup = logger, ckpt, setup
        self.log_every, self.final_step = log_every, final_step
        self.items_per_step = setup.task.items_per_batch(int(setup.config.train.global_batch_size))
        self._pending: tuple[int, dict[str, jax.Array]] | None = None
        self._t_last, self._steps_since = time.time(), 0
        self.last: dict[str, float] = {}

    def push(self, step_done: int, metrics: dict[str, jax.Array]) -> None:
        """Queue ``metrics`` of the step that completed ``step_done`` steps; read the previous."""
        self.flush()
        self._pending = (step_done, metrics)
        self._steps_since += 1

    def flush(self) -> None:
        if self._pending is None:
            return
        step_done, metrics = self._pending
        self._pending = None
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
            self.ckpt.wait()
            good = self.ckpt.latest_step()
            raise TrainingDivergedError(
                f"non-finite loss {host['loss']} / grad_norm {host['grad_norm']} at step {step_done}; "
                f"stopped without saving this state. Last good checkpoint: "
                f"{'none' if good is None else f'step {good}'} in {self.ckpt.directory}. "
                "Lower optimizer.lr or raise optimizer.warmup_steps and rerun to resume from it."
            )
        self.last = host
        if step_done % self.log_every == 0 or step_done == self.final_step:
            now = time.time()
            rate = self._steps_since * self.items_per_step / max(now - self._t_last, 1e-9)
            row = dict(host, **{f"{self.setup.task.item_name}_per_s": rate,
                                "data/skipped": self.setup.task.skipped_records()})
            self._t_last, self._steps_since = now, 0
            self.logger.log(step_done, row)


def restore_or_init(setup: TrainSetup, ckpt: Checkpointer) -> tuple[TrainState, dict[str, Any] | None]:
    """(state, this process's data-iterator state or None): the newest checkpoint that restores,
    else a fresh state."""
    restored = ckpt.restore_newest(setup.abstract_state)
    if restored is None:
        return setup.init_state(), None
    state, data_state, _ = restored
    return state, data_state


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    source: Sequence[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Train (or resume from ``WORKDIR/checkpoints``) up to ``train.total_steps``.

    Stops early after ``train.stop_at_step`` if set, or on SIGTERM, in both cases with a
    checkpoint. ``source`` replaces the configured data source (a random-access sequence of
    records). Returns the metrics of the last step, plus ``step`` and ``preempted``.
    Raises ``TrainingDivergedError`` on a non-finite loss, leaving the last good checkpoint.
    At ``total_steps`` the task exports its EMA weights to ``WORKDIR/export``.
    """
    parallel.initialize_distributed()
    workdir = os.path.abspath(os.fspath(workdir))
    total_steps = int(config.train.total_steps)
    stop_at = min(total_steps, int(config.train.stop_at_step or total_steps))

    setup = TrainSetup.from_config(config)
    task = setup.task
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(config.checkpoint.keep),
                        async_save=bool(config.checkpoint["async"]))
    state, data_state = restore_or_init(setup, ckpt)
    start = int(jax.device_get(state.step))
    data_iter = iter(task.dataset(source))
    if data_state is not None:
        data_iter.set_state(data_state)

    meta = task.metadata()
    logger = MetricsLogger(workdir, total_steps, start, progress=bool(config.log.progress))
    deferred = DeferredMetrics(logger, ckpt, setup, int(config.log.every_steps), stop_at)
    ckpt_every = int(config.checkpoint.every_steps)
    last_saved = start if ckpt.latest_step() == start else None
    image_logger, preempted = None, False

    def save(state: TrainState) -> None:
        nonlocal last_saved
        deferred.flush()
        ckpt.save(state, data_iter.get_state(), meta)
        last_saved = int(jax.device_get(state.step))

    try:
        with Preemption() as preemption:
            for step in range(start, stop_at):
                batch = setup.global_batch(next(data_iter))
                if step == start:
                    image_logger = task.image_logger(setup.mesh, setup.rules, batch)
                state, metrics = setup.step(state, batch)
                done = step + 1
                deferred.push(done, metrics)
                logger.advance()
                picture = None if image_logger is None else image_logger(state, done)
                if picture is not None:
                    if jax.process_index() == 0:
                        save_png(os.path.join(workdir, "grids", f"step_{done:08d}.png"), picture)
                    logger.image("reconstructions", picture, done)
                if done % ckpt_every == 0:
                    save(state)
                if preemption.reached(done):
                    preempted = done < stop_at
                    logger.message(f"SIGTERM: saving a checkpoint at step {done} and stopping")
                    break
        deferred.flush()
        final_step = int(jax.device_get(state.step))
        if last_saved != final_step:
            save(state)
        ckpt.wait()
        if final_step >= total_steps:
            task.export(os.path.join(workdir, "export"), state.ema_params, state.frozen)
    finally:
        ckpt.close()
        logger.close()
    return {**deferred.last, "step": final_step, "preempted": preempted, "data/skipped": task.skipped_records()}
