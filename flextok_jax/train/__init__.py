"""The one training system: a task (model, loss, batches) plugged into a shared setup and loop.

``TrainSetup.from_config(config)`` builds the task, optimizer, mesh, shardings and jitted step
once; ``train(config, workdir)`` runs them with checkpoints, resume, preemption and logging.
"""
from flextok_jax.train.checkpoint import Checkpointer, NoRestorableCheckpointError
from flextok_jax.train.loop import TrainingDivergedError, train
from flextok_jax.train.optimizer import ema_update, learning_rate_schedule, make_optimizer
from flextok_jax.train.repa import TEACHERS, register_teacher
from flextok_jax.train.setup import TASKS, TrainSetup, make_task, register_task
from flextok_jax.train.state import TrainState
from flextok_jax.train.step import make_train_step
from flextok_jax.train.task import Task
from flextok_jax.train.tokenizer_task import FlowLossHparams, TokenizerTask, flow_loss, sample_keep_k

__all__ = [
    "Checkpointer",
    "FlowLossHparams",
    "NoRestorableCheckpointError",
    "TASKS",
    "TEACHERS",
    "Task",
    "TokenizerTask",
    "TrainSetup",
    "TrainState",
    "TrainingDivergedError",
    "ema_update",
    "flow_loss",
    "learning_rate_schedule",
    "make_optimizer",
    "make_task",
    "make_train_step",
    "register_task",
    "register_teacher",
    "sample_keep_k",
    "train",
]
