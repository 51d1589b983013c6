"""Checkpoints of the train state and the data iterator (orbax), and the export of EMA weights.

Layout under ``WORKDIR/checkpoints/<step>/``: ``state`` (the whole ``TrainState``, one sharded
array checkpoint), ``data`` (each process's grain iterator state as JSON,
``process_<i>-of-<n>.json``) and ``meta`` (JSON: step and the task's metadata). Restoring takes
target shardings, so a checkpoint written on one mesh loads onto any other. A checkpoint that
cannot be read (a disk or network-filesystem fault) is skipped with a warning, and the run
resumes from the newest one that restores.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flextok_jax.train.state import TrainState


class NoRestorableCheckpointError(RuntimeError):
    """Every checkpoint in the folder failed to restore; the message names each step and why."""


class IteratorSnapshot:
    """A grain iterator's state, frozen at one step.

    Grain's orbax handler serialises ``get_state()`` at save time; an async save may run after the
    live iterator has moved on, so we hand it this snapshot instead (bytes go through the
    handler's non-``DatasetIterator`` path, which stores them verbatim as JSON text).
    """

    def __init__(self, state: dict[str, Any] | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:  # part of the interface grain's handler calls on restore
        pass


class Checkpointer:
    """Orbax ``CheckpointManager`` for (TrainState, data iterator state, metadata).

    Saves are asynchronous when ``async_save``: the train loop continues while arrays are written.
    Keeps the newest ``keep`` checkpoints.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.unreadable: set[int] = set()  # steps restore_newest could not read
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        """Start saving ``state`` at ``state.step`` (returns before the write completes if async).

        An unreadable checkpoint of the same step (see ``restore_newest``) is first renamed to
        ``<step>.unreadable`` beside it, so the new one can take its place and nothing is deleted.
        """
        step = int(jax.device_get(state.step))
        if step in self.unreadable:
            self._set_aside(step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(IteratorSnapshot(data_state)),
                meta=ocp.args.JsonSave({**meta, "step": step}),
            ),
            force=True,
        )

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any] | None, dict[str, Any]]:
        """(state placed by the shardings in ``abstract_state``, this process's data state, meta)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(IteratorSnapshot()),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out["state"], out["data"].state, out["meta"]

    def _set_aside(self, step: int) -> None:
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.unreadable"
        if os.path.exists(dst):  # set aside before, in an earlier run
            dst = f"{dst}.{int(time.time())}"
        if jax.process_index() == 0:
            os.rename(src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"flextok_set_aside_{step}")
        logging.warning("moved the unreadable checkpoint of step %d to %s", step, dst)
        self.unreadable.discard(step)
        self.manager.reload()

    def restore_newest(self, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any] | None, dict[str, Any]] | None:
        """``restore`` of the newest checkpoint that restores; None if there is none at all.

        An unreadable checkpoint is left in place (it may be wanted for forensics) and named in
        a warning; if none restores, ``NoRestorableCheckpointError`` names each step tried.
        """
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                out = self.restore(abstract_state, step)
            except Exception as e:  # orbax/tensorstore raise many types for a damaged file
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                failures.append(f"step {step} ({reason})")
                self.unreadable.add(step)
                logging.warning("checkpoint step %d in %s cannot be restored (%s); trying an older one",
                                step, self.directory, reason)
                continue
            if failures:
                logging.warning("resuming from step %d; unreadable newer checkpoints left in place: %s",
                                step, "; ".join(failures))
            return out
        if failures:
            raise NoRestorableCheckpointError(
                f"no checkpoint in {self.directory} restores: " + "; ".join(failures)
                + ". Move the folder away to start afresh."
            )
        return None

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
