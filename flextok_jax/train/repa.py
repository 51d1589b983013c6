"""REPA: align decoder patch features with a frozen teacher's patch features.

A teacher is any callable ``images [B, H, W, 3] in [-1, 1] -> features [B, Np, Dt]`` whose Np
patches form a square grid; it is never differentiated. Teachers are looked up by name in
``TEACHERS`` (``register_teacher`` adds one, e.g. a DINOv2 port). The projector that maps the
decoder's hidden states to the teacher's width is a learned MLP trained with the model.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.layers import dense, patchify

Teacher = Callable[[jax.Array], jax.Array]
# name -> factory(model config) -> (teacher, feature dim)
TEACHERS: dict[str, Callable[[FlexTokConfig], tuple[Teacher, int]]] = {}


def register_teacher(name: str, factory: Callable[[FlexTokConfig], tuple[Teacher, int]]) -> None:
    """Make ``train.repa_teacher=name`` available; ``factory(config) -> (teacher, Dt)``."""
    TEACHERS[name] = factory


def get_teacher(name: str, config: FlexTokConfig) -> tuple[Teacher, int]:
    if name not in TEACHERS:
        raise ValueError(f"unknown REPA teacher {name!r}; registered: {sorted(TEACHERS)}")
    return TEACHERS[name](config)


def _pixel_patches(config: FlexTokConfig) -> tuple[Teacher, int]:
    """The raw pixels of each decoder patch: a weight-free teacher for tests and smoke runs."""
    unit = config.vae_downsample * config.patch_size[0], config.vae_downsample * config.patch_size[1]

    def teacher(images: jax.Array) -> jax.Array:
        return patchify(images, unit)

    return teacher, unit[0] * unit[1] * 3


register_teacher("pixel_patches", _pixel_patches)


class RepaProjector(nn.Module):
    """[B, Np, D] decoder features -> [B, Np, out_dim] (Linear-SiLU-Linear-SiLU-Linear)."""

    hidden: int
    out_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.silu(dense(self.hidden, ("embed", "mlp"), name="fc1", use_bias=True)(x))
        x = nn.silu(dense(self.hidden, ("mlp", "embed_out"), name="fc2", use_bias=True)(x))
        return dense(self.out_dim, ("embed_out", None), name="fc3", use_bias=True)(x)


def _to_grid(feats: jax.Array, n: int) -> jax.Array:
    """Resample [B, Np, D] features on a square grid to n patches (bilinear)."""
    b, np_, d = feats.shape
    if np_ == n:
        return feats
    s, t = math.isqrt(np_), math.isqrt(n)
    if s * s != np_ or t * t != n:
        raise ValueError(f"cannot resample {np_} teacher patches to {n} decoder patches (not square grids)")
    grid = jax.image.resize(feats.reshape(b, s, s, d), (b, t, t, d), "bilinear")
    return grid.reshape(b, n, d)


def repa_loss(projected: jax.Array, teacher_feats: jax.Array) -> jax.Array:
    """Mean over images and patches of -cos(projected, teacher); shapes [B, Np, Dt]."""
    teacher_feats = jax.lax.stop_gradient(_to_grid(teacher_feats.astype(jnp.float32), projected.shape[1]))
    p = projected.astype(jnp.float32)
    p = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-6)
    q = teacher_feats / jnp.maximum(jnp.linalg.norm(teacher_feats, axis=-1, keepdims=True), 1e-6)
    return -jnp.mean(jnp.sum(p * q, axis=-1))


def init_projector(rng: jax.Array, dim: int, hidden: int, out_dim: int) -> Any:
    """Boxed projector params for decoder width ``dim``."""
    return RepaProjector(hidden, out_dim).init(rng, jnp.zeros((1, 1, dim)))["params"]
