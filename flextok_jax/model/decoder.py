"""FlexTok decoder: a rectified-flow transformer over noisy latent patches and register tokens.

The register path is codes -> Linear -> + learned 1-D position embedding -> nested dropout (rows
keep_k.. replaced by a learned mask token) -> optional null condition (every row replaced by a
learned null token, for the unconditional pass of guidance).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.layers import (
    AdaLNBlock,
    dense,
    layer_norm,
    patchify,
    sincos_posemb_2d,
    unpatchify,
)

TIME_FREQ_DIM = 256


def timestep_sinusoid(t: jax.Array, max_timestep: float = 1.0, dim: int = TIME_FREQ_DIM) -> jax.Array:
    """t [B] in [0, max_timestep] -> [B, dim] = [cos(t f), sin(t f)], cos first.

    f_k = (1000/max_timestep) exp(-ln(256) k/(dim/2)). The phases reach 1000 rad, where one float32
    ulp in f moves cos by ~6e-5, so the table follows the official float32 arithmetic exactly: the
    exponent in float32, a correctly rounded exp, the product with 1000/max_timestep in float32.
    """
    half = dim // 2
    exponent = np.float32(-math.log(256.0)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = np.float32(1000.0 / max_timestep) * np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = t.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid of the flow time, then Linear -> SiLU -> Linear."""

    dim: int
    max_timestep: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        """t: [B] -> [B, dim]."""
        h = timestep_sinusoid(t, self.max_timestep).astype(self.dtype)
        h = dense(self.dim, ("freq", "embed"), name="fc1", use_bias=True, dtype=self.dtype)(h)
        return dense(self.dim, ("embed", "embed_out"), name="fc2", use_bias=True, dtype=self.dtype)(nn.silu(h))


class FlexTokDecoder(nn.Module):
    """Predicts the flow velocity (about noise - x0) of noisy VAE latents given register codes."""

    config: FlexTokConfig
    dtype: Any = jnp.float32

    def _embed_param(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...], std: float) -> jax.Array:
        return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(std), axes), shape, jnp.float32)

    @nn.compact
    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        codes: jax.Array,
        keep_k: jax.Array,
        null_cond: jax.Array | None = None,
        collapse: bool = False,
        return_repa: bool = False,
        with_null: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """One decoder forward.

        x_t: [B, h, w, C] noisy latents; t: [B] flow time; codes: [B, n, code_dim] FSQ codes
        (n = n_registers); keep_k: int [B], rows >= keep_k become the mask token;
        null_cond: bool [B], True replaces every register by the null token.

        ``collapse=True`` runs the exact shortcut of issue 5: all masked rows hold the same vector
        and modulation, so they keep identical hidden states through every layer; one slot stands
        for all of them, with log(count) added to its attention logit. The register sequence is
        then ``codes.shape[1] + 1`` long, so pass only the first max(keep_k) rows of the codes.

        ``with_null=True`` (needs ``collapse``) also computes the null-condition pass of guidance
        in the same forward: its tokens (the patches plus one null slot standing for all n
        registers) are packed after the conditional ones, so every projection and MLP runs once
        over both, and attention stays within each pass.

        Returns the velocity [B, h, w, C] (float32); with ``with_null`` the pair (v_cond, v_null);
        with ``return_repa`` also the patch hidden states after block ``config.repa_layer``,
        [B, h*w/4, D].
        """
        cfg, tcfg = self.config, self.config.decoder
        b, h, w, _ = x_t.shape
        n = cfg.n_registers
        d = tcfg.dim
        if null_cond is None:
            null_cond = jnp.zeros((b,), bool)
        keep_k = jnp.broadcast_to(jnp.asarray(keep_k, jnp.int32), (b,))
        grid = (h // cfg.patch_size[0], w // cfg.patch_size[1])
        if with_null and not collapse:
            raise ValueError("with_null=True packs the collapsed null pass; it needs collapse=True")
        if with_null and return_repa:
            raise ValueError("return_repa is for training forwards; it cannot be combined with with_null")
        if collapse and not cfg.register_posemb_before_dropout:
            raise ValueError("the collapsed decoder needs register_posemb_before_dropout=True")

        from_latents = dense(d, ("code", "embed"), name="from_latents", use_bias=True, dtype=self.dtype)
        register_posemb = self._embed_param("register_posemb", (n, d), ("registers", "embed"), 0.02)
        mask_token = self._embed_param("mask_token", (d,), ("embed",), 0.02)
        null_token = self._embed_param("null_cond", (d,), ("embed",), 0.02)

        def registers(codes, null_cond):
            """-> (register tokens [B, S, D], their key bias [B, S] or None)."""
            slots = codes.shape[1]
            regs = from_latents(codes.astype(self.dtype))
            if cfg.register_posemb_before_dropout:
                regs = regs + register_posemb[:slots].astype(self.dtype)
            if not collapse:
                rows = jnp.arange(slots)[None, :, None]
                regs = jnp.where(rows >= keep_k[:, None, None], mask_token.astype(self.dtype), regs)
                regs = jnp.where(null_cond[:, None, None], null_token.astype(self.dtype), regs)
                if not cfg.register_posemb_before_dropout:
                    regs = regs + register_posemb[:slots].astype(self.dtype)
                return regs, None
            # Real rows 0..keep_k-1, then one representative mask-token (or null) slot.
            count = jnp.where(null_cond, n, n - keep_k)
            n_real = jnp.where(null_cond, 0, keep_k)[:, None]
            regs = jnp.where(null_cond[:, None, None], null_token.astype(self.dtype), regs)
            rep = jnp.where(null_cond[:, None], null_token, mask_token).astype(self.dtype)
            slot_bias = jnp.where(jnp.arange(slots)[None, :] < n_real, 0.0, -jnp.inf)
            rep_bias = jnp.where(count > 0, jnp.log(jnp.maximum(count, 1).astype(jnp.float32)), -jnp.inf)
            bias = jnp.concatenate([jnp.broadcast_to(slot_bias, (b, slots)), rep_bias[:, None]], axis=1)
            return jnp.concatenate([regs, rep[:, None, :]], axis=1), bias.astype(jnp.float32)

        patches = dense(d, ("patch", "embed"), name="patch_embed", use_bias=True, dtype=self.dtype)(
            patchify(x_t, cfg.patch_size).astype(self.dtype)
        )
        posemb = sincos_posemb_2d(*cfg.patch_grid, d)[: grid[0], : grid[1]]
        patches = patches + posemb.reshape(1, -1, d).astype(self.dtype)
        n_patches = patches.shape[1]

        regs, reg_bias = registers(codes, null_cond)
        parts, lengths = [patches, regs], [n_patches, regs.shape[1]]
        biases = None if reg_bias is None else [jnp.zeros((b, n_patches), jnp.float32), reg_bias]
        if with_null:
            null_regs, null_bias = registers(codes[:, :0], jnp.ones((b,), bool))
            parts += [patches, null_regs]
            lengths += [n_patches, null_regs.shape[1]]
            biases += [jnp.zeros((b, n_patches), jnp.float32), null_bias]
        x = jnp.concatenate(parts, axis=1)
        key_bias = None if biases is None else jnp.concatenate(biases, axis=1)
        # One attention span per pass; the last block computes only the patch rows, the only
        # ones the head reads.
        starts = np.cumsum([0] + lengths)
        passes = [(int(starts[i]), lengths[i] + lengths[i + 1]) for i in range(0, len(lengths), 2)]
        spans = tuple((s, ln, s, ln) for s, ln in passes)
        last_spans = tuple((s, n_patches, s, ln) for s, ln in passes)
        groups = (0, 1) * len(passes)

        temb = TimestepEmbedder(d, cfg.max_timestep, self.dtype, name="time_embed")(t)
        x = nn.with_logical_constraint(x, ("batch", "seq", "embed"))
        repa = None
        for i in range(tcfg.depth):
            block = AdaLNBlock(d, tcfg.head_dim, tuple(lengths), tcfg.mlp_ratio, self.dtype, groups, name=f"blocks_{i}")
            x = block(x, temb, None, key_bias, last_spans if i == tcfg.depth - 1 else spans)
            x = nn.with_logical_constraint(x, ("batch", "seq", "embed"))
            if i == cfg.repa_layer:
                repa = x[:, :n_patches]

        shift, scale = jnp.split(
            dense(2 * d, ("embed", "adaln"), name="head_adaln", use_bias=True, dtype=self.dtype,
                  kernel_init=nn.initializers.zeros_init())(nn.silu(temb)),
            2,
            axis=-1,
        )
        out = layer_norm(x) * (1 + scale[:, None]) + shift[:, None]  # x: the patch rows of each pass
        out = dense(cfg.patch_dim, ("embed", "patch"), name="head", use_bias=True, dtype=self.dtype,
                    kernel_init=nn.initializers.zeros_init())(out)
        velocity = [unpatchify(out[:, i * n_patches : (i + 1) * n_patches], grid, cfg.patch_size).astype(jnp.float32)
                    for i in range(len(passes))]
        if with_null:
            return velocity[0], velocity[1]
        if return_repa:
            if repa is None:
                raise ValueError("return_repa=True needs config.repa_layer to be set")
            return velocity[0], repa.astype(jnp.float32)
        return velocity[0]
