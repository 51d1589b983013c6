"""Shardings of the whole train state, and sharded creation of a fresh state.

Parameter shardings come from the logical axis names the task's model annotates (an abstract
boxed init mapped by ``config.sharding.rules``, ``parallel.abstract_shardings``); the optimizer
state and the EMA are laid out exactly like the parameters they track; step and rng are
replicated.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flextok_jax import parallel
from flextok_jax.train.state import TrainState
from flextok_jax.train.task import Rules, Task


def _opt_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any, mesh: Mesh) -> tuple[Any, Any]:
    opt_abstract = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, P())
    opt_sh = optax.tree_map_params(
        tx, lambda _, sh: sh, opt_abstract, param_shardings, transform_non_params=lambda _: replicated
    )
    return opt_abstract, opt_sh


def state_shardings(task: Task, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs carrying their shardings, state of NamedShardings)."""
    (trainable, frozen), (trainable_sh, frozen_sh) = parallel.abstract_shardings(
        task.init_boxed, mesh, rules, jax.random.key(0)
    )
    opt_abstract, opt_sh = _opt_shardings(tx, trainable, trainable_sh, mesh)
    replicated = NamedSharding(mesh, P())
    shardings = TrainState(
        step=replicated, params=trainable_sh, frozen=frozen_sh, opt_state=opt_sh,
        ema_params=trainable_sh, rng=replicated,
    )
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=trainable, frozen=frozen, opt_state=opt_abstract,
        ema_params=trainable, rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def put_global(tree: Any, shardings: Any) -> Any:
    """Host numpy arrays (the same full value on every process) -> global sharded jax.Arrays."""

    def put(x: Any, sharding: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def create_train_state(task: Task, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules, seed: int) -> TrainState:
    """A fresh state, created directly in its shardings (``parallel.sharded_init``).

    ``task.pretrained()`` (host arrays for top-level parts such as 'encoder' or 'vae') replaces
    the random init of those parts.
    """
    (trainable, frozen), (trainable_sh, frozen_sh) = parallel.sharded_init(
        task.init_boxed, mesh, rules, jax.random.key(seed)
    )
    for part, value in (task.pretrained() or {}).items():
        tree, sh = (trainable, trainable_sh) if part in trainable else (frozen, frozen_sh)
        if part not in sh:
            raise ValueError(f"pretrained weights for {part!r}, which the model does not have "
                             f"(parts: {sorted(trainable) + sorted(frozen)})")
        tree[part] = put_global(value, sh[part])
    _, opt_sh = _opt_shardings(tx, trainable, trainable_sh, mesh)
    copy: Callable[[Any], Any] = lambda p: jax.tree.map(jnp.copy, p)  # noqa: E731
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
        # A distinct buffer from params, so donating the state never aliases the two.
        ema = jax.jit(copy, out_shardings=trainable_sh)(trainable)
    replicated = NamedSharding(mesh, P())
    rng = put_global(np.asarray(jax.random.key_data(jax.random.key(seed))), replicated)
    step = put_global(np.zeros((), np.int32), replicated)
    return TrainState(step=step, params=trainable, frozen=frozen, opt_state=opt_state, ema_params=ema, rng=rng)
