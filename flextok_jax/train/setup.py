"""``TrainSetup``: everything a config describes for training, built once, in one place.

The loop, the train benchmark and every test that trains start from ``TrainSetup.from_config``:
the task (model, loss, batches), the optimizer and its schedule, the mesh and logical rules, the
state's shardings and the one jitted train step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flextok_jax import parallel
from flextok_jax.data.sharding import to_global_batch
from flextok_jax.train.optimizer import make_optimizer
from flextok_jax.train.sharding import create_train_state, state_shardings
from flextok_jax.train.state import TrainState
from flextok_jax.train.step import make_train_step
from flextok_jax.train.task import Metrics, Task

# config.task -> factory(config) -> Task. Imported lazily per entry so that the tokenizer's
# training does not import the generator and vice versa.
TASKS: dict[str, Callable[[ml_collections.ConfigDict], Task]] = {}


def register_task(name: str, factory: Callable[[ml_collections.ConfigDict], Task]) -> None:
    """Make ``config.task = name`` available."""
    TASKS[name] = factory


def _tokenizer_task(config: ml_collections.ConfigDict) -> Task:
    from flextok_jax.train.tokenizer_task import TokenizerTask

    return TokenizerTask(config)


def _generator_task(config: ml_collections.ConfigDict) -> Task:
    from flextok_jax.train.generator_task import GeneratorTask

    return GeneratorTask(config)


def _text_generator_task(config: ml_collections.ConfigDict) -> Task:
    from flextok_jax.train.text_generator_task import RecordCaptionTextGeneratorTask, TextGeneratorTask

    captions = config.data.get("captions", "templates")
    if captions not in ("templates", "records"):
        raise ValueError(f"data.captions must be 'templates' or 'records', got {captions!r}")
    return RecordCaptionTextGeneratorTask(config) if captions == "records" else TextGeneratorTask(config)


register_task("tokenizer", _tokenizer_task)
register_task("generator", _generator_task)
register_task("text_generator", _text_generator_task)


def make_task(config: ml_collections.ConfigDict) -> Task:
    if config.task not in TASKS:
        raise ValueError(f"unknown config.task {config.task!r}; registered: {sorted(TASKS)}")
    return TASKS[config.task](config)


@dataclasses.dataclass
class TrainSetup:
    """config, task, tx / schedule (``config.optimizer``), mesh and rules (``config.mesh``,
    ``config.sharding``), ``abstract_state`` (ShapeDtypeStructs with shardings, the restore
    target), ``shardings`` and ``step``: the jitted ``(state, global batch) -> (state, metrics)``,
    state donated, traced with the mesh and rules in effect (``parallel.MeshJit``)."""

    config: ml_collections.ConfigDict
    task: Task
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    rules: tuple[tuple[str, Any], ...]
    abstract_state: TrainState
    shardings: TrainState
    step: parallel.MeshJit

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, task: Task | None = None,
                    devices: Any = None) -> "TrainSetup":
        """``task`` replaces ``make_task(config)``; ``devices`` the mesh's devices (default all)."""
        task = make_task(config) if task is None else task
        tx, schedule = make_optimizer(config.optimizer, int(config.train.total_steps))
        mesh = parallel.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axis_names), devices)
        rules = tuple(tuple(r) for r in config.sharding.rules)
        abstract, shardings = state_shardings(task, tx, mesh, rules)
        step_fn = make_train_step(task.loss, tx, float(config.optimizer.ema_decay), schedule)
        batch_sh = {k: parallel.batch_sharding(mesh) for k in task.batch_keys}
        step = parallel.MeshJit(
            step_fn, mesh, rules,
            in_shardings=(shardings, batch_sh),
            out_shardings=(shardings, NamedSharding(mesh, P())),
            donate_argnums=(0,),
        )
        return cls(config, task, tx, schedule, mesh, rules, abstract, shardings, step)

    def init_state(self) -> TrainState:
        """A fresh state in its shardings (seed ``train.seed``; the task's pretrained parts)."""
        return create_train_state(self.task, self.tx, self.mesh, self.rules, int(self.config.train.seed))

    def global_batch(self, local_batch: dict[str, Any]) -> dict[str, jax.Array]:
        """This process's host batch -> the global batch-sharded arrays the step takes (only the
        task's ``batch_keys``)."""
        return to_global_batch({k: local_batch[k] for k in self.task.batch_keys}, self.mesh)

    def run_step(self, state: TrainState, local_batch: dict[str, Any]) -> tuple[TrainState, Metrics]:
        return self.step(state, self.global_batch(local_batch))
