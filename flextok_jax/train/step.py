"""The FlexTok training loss and the (unjitted) train step.

loss = E || decoder(x_t, t, FSQ(encoder(z))[:keep_k]) - (noise - z) ||^2 + w_repa * REPA, where
z are the frozen-VAE latents, keep_k is drawn per image (nested dropout), a fraction of images
is fully replaced by the null condition (for classifier-free guidance), and t ~ logit-normal.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flextok_jax import flow
from flextok_jax.model.flextok import FlexTok
from flextok_jax.model.fsq import fsq_quantize
from flextok_jax.train.optimizer import ema_update
from flextok_jax.train.repa import RepaProjector, Teacher, repa_loss
from flextok_jax.train.state import TrainState

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The static hyperparameters of the loss (from ``config.train`` / ``config.optimizer``)."""

    nested_dropout: str = "pow2"
    guidance_dropout: float = 0.1
    t_mean: float = 0.0
    t_std: float = 1.0
    repa_weight: float = 0.0
    repa_hidden: int = 2048
    repa_dim: int = 0
    ema_decay: float = 0.9999

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, repa_dim: int = 0) -> "LossConfig":
        t = config.train
        if t.nested_dropout not in ("uniform", "pow2"):
            raise ValueError(f"train.nested_dropout must be 'uniform' or 'pow2', got {t.nested_dropout!r}")
        return cls(
            nested_dropout=t.nested_dropout,
            guidance_dropout=float(t.guidance_dropout),
            t_mean=float(t.t_mean),
            t_std=float(t.t_std),
            repa_weight=float(t.repa_weight) if repa_dim else 0.0,
            repa_hidden=int(t.repa_hidden),
            repa_dim=int(repa_dim),
            ema_decay=float(config.optimizer.ema_decay),
        )


def sample_keep_k(rng: jax.Array, batch: int, n: int, mode: str) -> jax.Array:
    """Per-image token budgets, int32 [B]: 'uniform' over 1..n, 'pow2' over {1, 2, 4, ...} <= n."""
    if mode == "uniform":
        return jax.random.randint(rng, (batch,), 1, n + 1, dtype=jnp.int32)
    if mode == "pow2":
        num_pow = n.bit_length()  # 2**0 .. 2**(num_pow-1) <= n
        return jnp.left_shift(1, jax.random.randint(rng, (batch,), 0, num_pow, dtype=jnp.int32))
    raise ValueError(f"nested dropout mode must be 'uniform' or 'pow2', got {mode!r}")


def loss_fn(
    params: Any,
    frozen: Any,
    images: jax.Array,
    rng: jax.Array,
    model: FlexTok,
    hp: LossConfig,
    teacher: Teacher | None = None,
) -> tuple[jax.Array, Metrics]:
    """images [B, H, W, 3] in [-1, 1] -> (scalar loss, metrics). ``params`` are differentiated."""
    cfg = model.config
    b = images.shape[0]
    r_keep, r_null, r_t, r_noise = jax.random.split(rng, 4)
    # The VAE is frozen: no gradient flows into it (and none is needed through it).
    x0 = jax.lax.stop_gradient(model.encode_latents(frozen, images))
    codes = fsq_quantize(model.encode_registers(params, x0), cfg.fsq_levels)
    keep_k = sample_keep_k(r_keep, b, cfg.n_registers, hp.nested_dropout)
    null_cond = jax.random.bernoulli(r_null, hp.guidance_dropout, (b,))
    t = flow.sample_logit_normal_t(r_t, b, hp.t_mean, hp.t_std)
    noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
    x_t = flow.add_noise(x0, noise, t)

    use_repa = teacher is not None and hp.repa_weight > 0
    out = model.decoder.apply(
        {"params": params["decoder"]}, x_t, t, codes, keep_k, null_cond, return_repa=use_repa
    )
    velocity, hidden = out if use_repa else (out, None)
    loss_flow = jnp.mean(jnp.square(velocity - (noise - x0)))
    metrics = {"loss_flow": loss_flow}
    loss = loss_flow
    if use_repa:
        projected = RepaProjector(hp.repa_hidden, hp.repa_dim).apply({"params": params["repa_proj"]}, hidden)
        loss_repa = repa_loss(projected, teacher(images))
        loss = loss + hp.repa_weight * loss_repa
        metrics["loss_repa"] = loss_repa
    metrics["loss"] = loss
    return loss, metrics


def make_train_step(
    model: FlexTok,
    tx: optax.GradientTransformation,
    hp: LossConfig,
    schedule: optax.Schedule | None = None,
    teacher: Teacher | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]:
    """``step(state, batch) -> (new state, metrics)``; batch {"image": [B, H, W, 3], ...}.

    Metrics are scalars: loss, loss_flow[, loss_repa], grad_norm, param_norm[, lr].
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, state.frozen, batch["image"], state.step_key(), model, hp, teacher)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, hp.ema_decay),
        )
        return new_state, metrics

    return train_step
