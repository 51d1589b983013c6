"""FlexTok training: loss, sharded train state, checkpoints, logging and the train loop."""
from flextok_jax.train.benchmark import benchmark_train_step
from flextok_jax.train.build import Setup, build
from flextok_jax.train.checkpoint import EXPORT_FILE, Checkpointer, export_ema_params
from flextok_jax.train.loop import TrainingDivergedError, train
from flextok_jax.train.optimizer import ema_update, learning_rate_schedule, make_optimizer
from flextok_jax.train.repa import TEACHERS, register_teacher
from flextok_jax.train.sharding import create_train_state, state_shardings
from flextok_jax.train.state import TrainState
from flextok_jax.train.step import LossConfig, loss_fn, make_train_step, sample_keep_k

__all__ = [
    "Checkpointer",
    "EXPORT_FILE",
    "LossConfig",
    "Setup",
    "TEACHERS",
    "TrainState",
    "TrainingDivergedError",
    "benchmark_train_step",
    "build",
    "create_train_state",
    "ema_update",
    "export_ema_params",
    "learning_rate_schedule",
    "loss_fn",
    "make_optimizer",
    "make_train_step",
    "register_teacher",
    "sample_keep_k",
    "state_shardings",
    "train",
]
