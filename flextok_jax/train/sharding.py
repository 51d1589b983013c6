"""Shardings of the whole train state, and sharded creation of a fresh state.

Parameter shardings come from the logical axis names the model annotates (``nn.get_partition_spec``
of an abstract boxed init, mapped by ``config.sharding.rules``); the optimizer state and the EMA
are laid out exactly like the parameters they track; step and rng are replicated.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flextok_jax import parallel
from flextok_jax.model.flextok import FlexTok
from flextok_jax.train.repa import init_projector
from flextok_jax.train.state import TrainState
from flextok_jax.train.step import LossConfig

Rules = Sequence[tuple[str, Any]]


def boxed_params_fn(model: FlexTok, hp: LossConfig) -> Callable[[jax.Array], tuple[Any, Any]]:
    """rng -> (trainable, frozen) boxed params: trainable {'encoder', 'decoder'[, 'repa_proj']},
    frozen {'vae'} (or {} for a pixel-space model)."""

    def init(rng: jax.Array) -> tuple[Any, Any]:
        r_model, r_proj = jax.random.split(rng)
        p = model.init_boxed(r_model)
        trainable = {"encoder": p["encoder"], "decoder": p["decoder"]}
        if hp.repa_dim:
            trainable["repa_proj"] = init_projector(r_proj, model.config.decoder.dim, hp.repa_hidden, hp.repa_dim)
        frozen = {"vae": p["vae"]} if "vae" in p else {}
        return trainable, frozen

    return init


def state_shardings(
    model: FlexTok, tx: optax.GradientTransformation, hp: LossConfig, mesh: Mesh, rules: Rules
) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs carrying their shardings, state of NamedShardings)."""
    boxed = jax.eval_shape(boxed_params_fn(model, hp), jax.random.key(0))
    trainable, frozen = nn.unbox(boxed)
    trainable_sh, frozen_sh = parallel.fit_to_shapes(
        parallel.logical_to_shardings(nn.get_partition_spec(boxed), mesh, rules), (trainable, frozen)
    )
    replicated = NamedSharding(mesh, P())
    opt_abstract = jax.eval_shape(tx.init, trainable)
    opt_sh = optax.tree_map_params(
        tx, lambda _, sh: sh, opt_abstract, trainable_sh, transform_non_params=lambda _: replicated
    )
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


def create_train_state(
    model: FlexTok,
    tx: optax.GradientTransformation,
    hp: LossConfig,
    mesh: Mesh,
    rules: Rules,
    seed: int,
    init_params: dict[str, Any] | None = None,
) -> tuple[TrainState, TrainState]:
    """A fresh state, created directly in its shardings. Returns (state, shardings).

    ``init_params``: optional host arrays {'encoder', 'decoder'[, 'vae']} (e.g. an official
    checkpoint) that replace the random init of those parts; others stay random.
    """
    _, shardings = state_shardings(model, tx, hp, mesh, rules)
    boxed_fn = boxed_params_fn(model, hp)
    given = dict(init_params or {})
    given_trainable = {k: v for k, v in given.items() if k in ("encoder", "decoder", "repa_proj")}
    given_frozen = {k: v for k, v in given.items() if k == "vae"}
    given_trainable = put_global(given_trainable, {k: shardings.params[k] for k in given_trainable})
    given_frozen = put_global(given_frozen, {k: shardings.frozen[k] for k in given_frozen})

    def init(rng_data: jax.Array, g_trainable: Any, g_frozen: Any) -> TrainState:
        trainable, frozen = nn.unbox(boxed_fn(jax.random.wrap_key_data(rng_data)))
        trainable.update(g_trainable)
        frozen.update(g_frozen)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=trainable,
            frozen=frozen,
            opt_state=tx.init(trainable),
            # A distinct buffer from params, so donating the state never aliases the two.
            ema_params=jax.tree.map(jnp.copy, trainable),
            rng=rng_data,
        )

    rng = jax.random.key_data(jax.random.key(seed))
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        state = jax.jit(init, out_shardings=shardings)(rng, given_trainable, given_frozen)
    return state, shardings


def jit_train_step(step_fn: Callable, mesh: Mesh, rules: Sequence[tuple[str, Any]], shardings: TrainState
                   ) -> parallel.MeshJit:
    """The jitted ``step_fn(state, batch)``: state in and out on ``shardings`` (donated), the batch
    split over the data axes, metrics replicated; traced with the mesh and logical rules in effect."""
    return parallel.MeshJit(
        step_fn, mesh, rules,
        in_shardings=(shardings, {"image": parallel.batch_sharding(mesh)}),
        out_shardings=(shardings, NamedSharding(mesh, P())),
        donate_argnums=(0,),
    )
