"""Reconstruction grids: originals, then decodings from the first k = 1, 2, 4, ... tokens."""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from flextok_jax import flow, parallel
from flextok_jax.evaluate import grid_image, token_budgets  # noqa: F401 (re-exported)
from flextok_jax.model.flextok import FlexTok
from flextok_jax.model.fsq import fsq_quantize


def make_reconstruct_fn(
    model: FlexTok, mesh: Mesh, rules: Sequence[tuple[str, Any]], num_images: int, num_steps: int
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Jitted ``(params, images [B>=num_images, H, W, 3], rng) -> [1 + len(ks), num_images, H, W, 3]``.

    params: {'encoder', 'decoder'[, 'vae']}. Output is replicated so every process can read it.
    Sampling uses no guidance; the same noise serves every k so columns differ only by tokens.
    """
    ks = token_budgets(model.config.n_registers)

    def reconstruct(params: Any, images: jax.Array, rng: jax.Array) -> jax.Array:
        images = images[:num_images]
        x0 = model.encode_latents(params, images)
        codes = fsq_quantize(model.encode_registers(params, x0), model.config.fsq_levels)
        noise = jax.random.normal(rng, x0.shape, jnp.float32)
        outs = [images.astype(jnp.float32)]
        for k in ks:
            keep = jnp.full((num_images,), k, jnp.int32)
            fn = lambda x, t, _with_null, keep=keep: (model.velocity(params, x, t, codes, keep), None)
            outs.append(model.decode_latents(params, flow.euler_sample(fn, noise, num_steps)))
        return jnp.stack(outs)

    return parallel.MeshJit(reconstruct, mesh, rules, out_shardings=NamedSharding(mesh, P()))


def first_images(images: jax.Array, n: int, mesh: Mesh) -> jax.Array:
    """The first n of a (global, batch-sharded) [B, H, W, 3] batch, replicated: what the grids
    keep for the whole run instead of the whole batch."""
    return jax.jit(lambda x: x[:n], out_shardings=NamedSharding(mesh, P()))(images)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)

