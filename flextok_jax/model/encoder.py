"""FlexTok encoder: latent patches + learned registers -> prefix-causal ViT -> FSQ inputs."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.layers import Block, dense, layer_norm, patchify, sincos_posemb_2d


def prefix_causal_mask(num_patches: int, num_registers: int) -> jax.Array:
    """bool [N, N], N = patches + registers: key j is visible to query i iff j is a patch or j <= i.

    Patches therefore see only patches, and register i sees every patch and registers 0..i.
    """
    n = num_patches + num_registers
    q = jnp.arange(n)[:, None]
    k = jnp.arange(n)[None, :]
    return (k < num_patches) | (k <= q)


class FlexTokEncoder(nn.Module):
    """Maps VAE latents [B, h, w, C] to per-register FSQ inputs [B, k, code_dim]."""

    config: FlexTokConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latents: jax.Array, num_registers: int | None = None) -> jax.Array:
        """latents: [B, h, w, C] (already scaled). ``num_registers`` = k computes only registers
        0..k-1, which is exact because of the prefix-causal mask. Returns float32 [B, k, code_dim]."""
        cfg, tcfg = self.config, self.config.encoder
        k = cfg.n_registers if num_registers is None else num_registers
        b, h, w, _ = latents.shape
        grid = (h // cfg.patch_size[0], w // cfg.patch_size[1])

        patches = dense(tcfg.dim, ("patch", "embed"), name="patch_embed", use_bias=True, dtype=self.dtype)(
            patchify(latents, cfg.patch_size).astype(self.dtype)
        )
        posemb = sincos_posemb_2d(*cfg.patch_grid, tcfg.dim)[: grid[0], : grid[1]]
        patches = patches + posemb.reshape(1, -1, tcfg.dim).astype(self.dtype)

        registers = self.param(
            "registers",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("registers", "embed")),
            (cfg.n_registers, tcfg.dim),
            jnp.float32,
        )
        registers = jnp.broadcast_to(registers[:k].astype(self.dtype), (b, k, tcfg.dim))

        x = jnp.concatenate([patches, registers], axis=1)
        x = nn.with_logical_constraint(x, ("act_batch", "act_seq", "act_embed"))
        n_patches = patches.shape[1]
        mask = prefix_causal_mask(n_patches, k)[None, None]
        # The head reads only the registers, so the last block computes only their rows.
        last_spans = ((n_patches, k, 0, n_patches + k),)
        for i in range(tcfg.depth):
            spans = last_spans if i == tcfg.depth - 1 else None
            x = Block(tcfg.dim, tcfg.head_dim, tcfg.mlp_ratio, self.dtype, name=f"blocks_{i}")(x, mask, None, spans)
            x = nn.with_logical_constraint(x, ("act_batch", "act_seq", "act_embed"))

        out = layer_norm(x)
        z = dense(cfg.code_dim, ("embed", "code"), name="to_latents", use_bias=True, dtype=self.dtype)(out)
        return z.astype(jnp.float32)
