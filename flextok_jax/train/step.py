"""The train step of every task: loss gradient, optimizer update, EMA, step metrics (unjitted)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from flextok_jax.train.optimizer import ema_update
from flextok_jax.train.state import TrainState
from flextok_jax.train.task import Metrics

LossFn = Callable[..., tuple[jax.Array, Metrics]]  # (params, frozen, batch, rng) -> (loss, metrics)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema_decay: float,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]:
    """``step(state, batch) -> (new state, metrics)``.

    Metrics are scalars: the loss's own (loss, ...), grad_norm, param_norm[, lr].
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, state.frozen, batch, state.step_key())
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, ema_decay),
        )
        return new_state, metrics

    return train_step
