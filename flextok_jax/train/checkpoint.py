"""Checkpoints of the train state and the data iterator (orbax), and our own params format.

Layout under ``WORKDIR/checkpoints/<step>/``: ``state`` (the whole ``TrainState``, one sharded
array checkpoint), ``data`` (each process's grain iterator state as JSON,
``process_<i>-of-<n>.json``) and ``meta`` (JSON: step, FlexTokConfig). Restoring takes target
shardings, so a checkpoint written on one mesh loads onto any other.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.flextok import FlexTok
from flextok_jax.train.state import TrainState

CONFIG_FILE = "flextok_config.json"


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
        """Start saving ``state`` at ``state.step`` (returns before the write completes if async)."""
        step = int(jax.device_get(state.step))
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

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# --------------------------------------------------------------------------- params format
def save_params(path: str | os.PathLike, params: Any) -> None:
    """Write a params pytree (possibly sharded over processes) as an orbax array checkpoint."""
    path = os.path.abspath(os.fspath(path))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=True)
        ckptr.wait_until_finished()


def load_params(path: str | os.PathLike, target: Any = None, shardings: Any = None) -> Any:
    """Read params written by ``save_params``.

    ``target``: a pytree of arrays / ShapeDtypeStructs fixing structure, dtypes and (if they
    carry one) shardings; ``shardings``: a pytree of shardings for the stored structure. With
    neither, arrays land on the first local device as jax Arrays.
    """
    path = os.path.abspath(os.fspath(path))
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            meta = ckptr.metadata(path).item_metadata.tree
            default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shard_tree = shardings if shardings is not None else jax.tree.map(lambda _: default, meta)
            target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), meta, shard_tree)
        elif shardings is not None:
            target = jax.tree.map(lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s), target, shardings)
        return ckptr.restore(path, target)


def export_ema_params(path: str | os.PathLike, state: TrainState, model_config: FlexTokConfig) -> None:
    """Write the EMA weights (+ the frozen VAE) and the architecture for ``load_exported``.

    ``path/params`` holds {'encoder', 'decoder'[, 'vae']}; ``path/flextok_config.json`` the config.
    """
    path = os.path.abspath(os.fspath(path))
    params = {"encoder": state.ema_params["encoder"], "decoder": state.ema_params["decoder"], **state.frozen}
    save_params(os.path.join(path, "params"), params)
    if jax.process_index() == 0:
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(model_config.to_dict(), f, indent=1)


def load_exported(path: str | os.PathLike, dtype: Any = np.float32) -> tuple[FlexTok, Any]:
    """(FlexTok model, params) from an ``export_ema_params`` folder, ready for tokenize/detokenize."""
    path = os.path.abspath(os.fspath(path))
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = FlexTokConfig.from_dict(json.load(f))
    return FlexTok(config, dtype=dtype), load_params(os.path.join(path, "params"))
