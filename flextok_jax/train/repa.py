"""REPA: align decoder patch features with a frozen teacher's patch features.

A teacher (``RepaTeacher``) is ``features(weights, images [B, H, W, 3] in [-1, 1]) -> [B, Np, Dt]``
whose Np patches form a square grid, never differentiated. Its weights are frozen parameters of
the train state (``frozen['repa_teacher']``), sharded by their logical axis names like any other
parameter and checkpointed with it; they are never constants of the jitted step (a DINOv2-L
closed over would be 1.2 GB of replicated constants in every compiled program). Teachers are
looked up by name in ``TEACHERS``: ``pixel_patches`` (weight-free, for tests and smoke runs),
``dinov2`` (``train.repa_teacher_weights``), or any ``register_teacher``. The projector that maps
the decoder's hidden states to the teacher's width is a learned MLP trained with the model.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flextok_jax.evaluate.dinov2 import dinov2_init_boxed, load_dinov2, patch_features
from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.layers import dense, patchify


@dataclasses.dataclass(frozen=True)
class RepaTeacher:
    """``features(weights, images) -> [B, Np, dim]``; ``init_boxed(rng)`` gives boxed weights of
    the right shapes and logical axes, ``weights()`` the host arrays that replace them (both
    None for a weight-free teacher, whose ``features`` gets ``weights=None``)."""

    features: Callable[[Any, jax.Array], jax.Array]
    dim: int
    init_boxed: Callable[[jax.Array], Any] | None = None
    weights: Callable[[], Any] | None = None


# name -> factory(model config, weights path or None) -> RepaTeacher
TeacherFactory = Callable[[FlexTokConfig, "str | None"], RepaTeacher]
TEACHERS: dict[str, TeacherFactory] = {}


def register_teacher(name: str, factory: TeacherFactory) -> None:
    """Make ``train.repa_teacher=name`` available; ``factory(config, weights_path) -> RepaTeacher``."""
    TEACHERS[name] = factory


def get_teacher(name: str, config: FlexTokConfig, weights_path: str | None = None) -> RepaTeacher:
    if name not in TEACHERS:
        raise ValueError(f"unknown REPA teacher {name!r}; registered: {sorted(TEACHERS)}")
    return TEACHERS[name](config, weights_path)


def _pixel_patches(config: FlexTokConfig, weights_path: str | None) -> RepaTeacher:
    """The raw pixels of each decoder patch: a weight-free teacher for tests and smoke runs."""
    del weights_path
    unit = config.vae_downsample * config.patch_size[0], config.vae_downsample * config.patch_size[1]
    return RepaTeacher(features=lambda weights, images: patchify(images, unit), dim=unit[0] * unit[1] * 3)


def dinov2_teacher(config: FlexTokConfig, weights_path: str | os.PathLike | None) -> RepaTeacher:
    """DINOv2 patch tokens at REPA's input size, from a safetensors file in the torch key names."""
    del config  # the teacher does not depend on the tokenizer's sizes
    if not weights_path:
        raise ValueError("train.repa_teacher='dinov2' needs train.repa_teacher_weights "
                         "(a DINOv2 .safetensors in the official torch key names)")
    model, params = load_dinov2(weights_path)
    return RepaTeacher(features=lambda weights, images: patch_features(model, weights, images),
                       dim=model.config.embed_dim, init_boxed=lambda rng: dinov2_init_boxed(model, rng),
                       weights=lambda: params)


register_teacher("pixel_patches", _pixel_patches)
register_teacher("dinov2", dinov2_teacher)


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
