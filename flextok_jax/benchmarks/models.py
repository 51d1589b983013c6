"""Benchmark model sizes and cheap random parameters.

``FlexTok.init`` follows the training init, whose adaLN-zero gates and zero heads make whole
branches vanish; the benchmarks draw every parameter at random from the abstract shapes instead,
so they time (and the fast-inference tests compare) a model in which every path matters.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.model.config import FlexTokConfig, TransformerConfig
from flextok_jax.model.flextok import FlexTok, Params
from flextok_jax.model.vae import STANDARD_VAE, VAEConfig

TINY_VAE = VAEConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)


def model_config(size: str) -> FlexTokConfig:
    """'d12': the released d12-d12 at 256 px (dim 768, depth 12, 256 registers, 16x16 patch
    grid, standard VAE); 'tiny': the parity fixture's shape at 64 px (dim 64, depth 2, 16 registers)."""
    if size == "d12":
        t = TransformerConfig(dim=768, depth=12, head_dim=64)
        return FlexTokConfig(encoder=t, decoder=t, n_registers=256, patch_grid=(16, 16), vae=STANDARD_VAE)
    if size == "tiny":
        t = TransformerConfig(dim=64, depth=2, head_dim=32)
        return FlexTokConfig(encoder=t, decoder=t, n_registers=16, patch_grid=(4, 4), vae=TINY_VAE)
    raise ValueError(f"unknown size {size!r}; expected 'd12' or 'tiny'")


def random_params(model: FlexTok, seed: int = 0) -> Params:
    """Random float32 parameters of the right shapes: weights N(0, 1/fan_in), everything else
    (biases, tokens, norm affines) N(0, 0.02^2) around 0 or 1, so no branch is zeroed out."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = str(getattr(path[-1], "key", path[-1]))
        shape = leaf.shape
        if name == "kernel":
            std = 1.0 / math.sqrt(int(np.prod(shape[:-1])))
            arr = rng.standard_normal(shape, np.float32) * std
        elif name == "scale":
            arr = 1.0 + 0.02 * rng.standard_normal(shape, np.float32)
        else:
            arr = 0.02 * rng.standard_normal(shape, np.float32)
        out.append(jnp.asarray(arr, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, out)
