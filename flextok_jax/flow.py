"""Rectified flow: noising, time sampling, and the Euler sampler with CFG / APG guidance.

Convention: x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0, and sampling integrates
dx/dt = v from t = 1 (noise) down to t = 0 with plain Euler steps in float32.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# APG constants of the released pipeline (parity README, 13).
APG_MOMENTUM = -0.5
APG_NORM_THRESHOLD = 2.5

VelocityFn = Callable[[jax.Array, jax.Array, bool], tuple[jax.Array, jax.Array | None]]


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x0, noise: [B, ...]; t: [B] -> x_t = (1-t) x0 + t noise."""
    t = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    return (1 - t) * x0 + t * noise


def sample_logit_normal_t(rng: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """Training times t = sigmoid(N(mean, std^2)), [B] (SD3's logit-normal weighting)."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))


def _per_image_norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))


def apg_direction(
    v_cond: jax.Array, v_null: jax.Array, running: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Adaptive projected guidance: the guidance direction orthogonal to v_cond.

    Returns (d_orth, new_running). ``running`` is the per-image momentum buffer (zeros at the
    first step) that persists across the sampling steps.
    """
    running = (v_cond - v_null) + APG_MOMENTUM * running
    d = running * jnp.minimum(1.0, APG_NORM_THRESHOLD / jnp.maximum(_per_image_norm(running), 1e-30))
    u = v_cond / jnp.maximum(_per_image_norm(v_cond), 1e-30)
    parallel = jnp.sum(d * u, axis=tuple(range(1, d.ndim)), keepdims=True)
    return d - parallel * u, running


def cfg_velocity(v_cond: jax.Array, v_null: jax.Array, guidance_scale: jax.Array | float) -> jax.Array:
    """Classifier-free guidance: v_null + w (v_cond - v_null)."""
    return v_null + guidance_scale * (v_cond - v_null)


def euler_sample(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    num_steps: int,
    guidance_scale: jax.Array | float = 1.0,
    guidance: str = "cfg",
    use_guidance: bool = False,
) -> jax.Array:
    """Integrate from t=1 to 0 in ``num_steps`` Euler steps, as one compiled loop.

    ``velocity_fn(x [B,...], t [B], with_null)`` returns (v_cond, v_null) — v_null is None
    when ``with_null`` is False — ideally from one batched forward. With ``use_guidance`` the
    velocity is ``v_null + w (v_cond - v_null)`` (cfg) or ``v_cond + (w-1) d_orth`` (apg).
    Returns x at t=0, same shape as ``noise``.
    """
    if guidance not in ("cfg", "apg"):
        raise ValueError(f"guidance must be 'cfg' or 'apg', got {guidance!r}")
    b = noise.shape[0]
    w = jnp.asarray(guidance_scale, jnp.float32)
    dt = jnp.float32(1.0 / num_steps)

    def step(i, carry):
        x, running = carry
        t = jnp.full((b,), (num_steps - i).astype(jnp.float32) / num_steps, jnp.float32)
        v_cond, v_null = velocity_fn(x, t, use_guidance)
        if not use_guidance:
            v = v_cond
        elif guidance == "cfg":
            v = cfg_velocity(v_cond, v_null, w)
        else:
            d_orth, running = apg_direction(v_cond, v_null, running)
            v = v_cond + (w - 1.0) * d_orth
        return x - dt * v, running

    x, _ = jax.lax.fori_loop(0, num_steps, step, (noise.astype(jnp.float32), jnp.zeros_like(noise, jnp.float32)))
    return x
