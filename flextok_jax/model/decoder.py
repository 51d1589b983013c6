"""FlexTok decoder: a rectified-flow transformer over noisy latent patches and register tokens.

The register path is codes -> Linear -> + learned 1-D position embedding -> nested dropout (rows
keep_k.. replaced by a learned mask token) -> optional null condition (every row replaced by a
learned null token, for the unconditional pass of guidance).

A forward is built in three steps: register sequences (``registers``: all n rows as the official
code computes them; ``collapsed_registers``: the exact shortcut), ``pack_passes`` (one or more
(patches, registers) passes side by side in one token sequence, attention kept within each), and
the trunk. The entry points have fixed return types: ``velocity``, ``velocity_with_null`` (the
conditional and null passes of guidance from one forward) and ``velocity_and_features`` (training
with REPA).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.layers import (
    AdaLNBlock,
    Segments,
    Span,
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


@dataclasses.dataclass(frozen=True)
class PackedPasses:
    """Several (patches, registers) passes packed into one token sequence.

    x: [B, N, D]; key_bias: float [B, N] or None (log-counts of collapsed slots, -inf for unused
    rows); segments: (lengths, groups) with group 0 = patches, 1 = registers; spans: one attention
    span per pass; last_spans: the same keys but only each pass's patch rows as queries (the only
    rows the head reads); n_patches: patch rows per pass.
    """

    x: jax.Array
    key_bias: jax.Array | None
    segments: Segments
    spans: tuple[Span, ...]
    last_spans: tuple[Span, ...]
    n_patches: int

    @property
    def num_passes(self) -> int:
        return len(self.spans)


def pack_passes(passes: Sequence[tuple[jax.Array, jax.Array, jax.Array | None]]) -> PackedPasses:
    """[(patches [B, P, D], registers [B, S_i, D], register key bias [B, S_i] or None), ...] ->
    one sequence (patches_0, registers_0, patches_1, registers_1, ...). Either every pass has a
    key bias or none has."""
    has_bias = [bias is not None for _, _, bias in passes]
    if any(has_bias) and not all(has_bias):
        raise ValueError("pack_passes: either every pass has a register key bias or none has")
    b, n_patches = passes[0][0].shape[:2]
    parts, lengths, biases = [], [], []
    for patches, regs, bias in passes:
        parts += [patches, regs]
        lengths += [n_patches, regs.shape[1]]
        if bias is not None:
            biases += [jnp.zeros((b, n_patches), jnp.float32), bias]
    starts = np.cumsum([0] + lengths)
    bounds = [(int(starts[i]), lengths[i] + lengths[i + 1]) for i in range(0, len(lengths), 2)]
    return PackedPasses(
        x=jnp.concatenate(parts, axis=1),
        key_bias=jnp.concatenate(biases, axis=1) if biases else None,
        segments=(tuple(lengths), (0, 1) * len(passes)),
        spans=tuple((s, ln, s, ln) for s, ln in bounds),
        last_spans=tuple((s, n_patches, s, ln) for s, ln in bounds),
        n_patches=n_patches,
    )


class FlexTokDecoder(nn.Module):
    """Predicts the flow velocity (about noise - x0) of noisy VAE latents given register codes.

    Shapes: x_t [B, h, w, C] noisy latents; t [B] flow time; codes [B, S, code_dim] FSQ codes
    (S = n_registers, or fewer for the collapsed forms); keep_k int [B] (rows >= keep_k become
    the mask token); null_cond bool [B] (True replaces every register by the null token).
    Velocities are float32 [B, h, w, C].
    """

    config: FlexTokConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg, tcfg = self.config, self.config.decoder
        d = tcfg.dim
        embed = lambda name, shape, axes: self.param(  # noqa: E731
            name, nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), shape, jnp.float32
        )
        self.from_latents = dense(d, ("code", "embed"), use_bias=True, dtype=self.dtype)
        self.patch_embed = dense(d, ("patch", "embed"), use_bias=True, dtype=self.dtype)
        self.register_posemb = embed("register_posemb", (cfg.n_registers, d), ("registers", "embed"))
        self.mask_token = embed("mask_token", (d,), ("embed",))
        self.null_token = embed("null_cond", (d,), ("embed",))
        self.time_embed = TimestepEmbedder(d, cfg.max_timestep, self.dtype)
        self.blocks = [AdaLNBlock(d, tcfg.head_dim, tcfg.mlp_ratio, self.dtype) for _ in range(tcfg.depth)]
        zeros = nn.initializers.zeros_init()
        self.head_adaln = dense(2 * d, ("embed", "adaln"), use_bias=True, dtype=self.dtype, kernel_init=zeros)
        self.head = dense(cfg.patch_dim, ("embed", "patch"), use_bias=True, dtype=self.dtype, kernel_init=zeros)

    # ------------------------------------------------------------------ sequence builders
    def embed_patches(self, x_t: jax.Array) -> jax.Array:
        """[B, h, w, C] -> patch tokens [B, P, D] with the 2-D sin-cos position embedding."""
        cfg, d = self.config, self.config.decoder.dim
        grid = (x_t.shape[1] // cfg.patch_size[0], x_t.shape[2] // cfg.patch_size[1])
        patches = self.patch_embed(patchify(x_t, cfg.patch_size).astype(self.dtype))
        posemb = sincos_posemb_2d(*cfg.patch_grid, d)[: grid[0], : grid[1]]
        return patches + posemb.reshape(1, -1, d).astype(self.dtype)

    def _embedded_codes(self, codes: jax.Array) -> jax.Array:
        regs = self.from_latents(codes.astype(self.dtype))
        if self.config.register_posemb_before_dropout:
            regs = regs + self.register_posemb[: codes.shape[1]].astype(self.dtype)
        return regs

    def registers(self, codes: jax.Array, keep_k: jax.Array, null_cond: jax.Array) -> jax.Array:
        """All register rows as the official code computes them: [B, S, D]."""
        slots = codes.shape[1]
        regs = self._embedded_codes(codes)
        rows = jnp.arange(slots)[None, :, None]
        regs = jnp.where(rows >= keep_k[:, None, None], self.mask_token.astype(self.dtype), regs)
        regs = jnp.where(null_cond[:, None, None], self.null_token.astype(self.dtype), regs)
        if not self.config.register_posemb_before_dropout:
            regs = regs + self.register_posemb[:slots].astype(self.dtype)
        return regs

    def collapsed_registers(
        self, codes: jax.Array, keep_k: jax.Array, null_cond: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """The exact shortcut of the masked rows: (tokens [B, S + 1, D], key bias [B, S + 1]).

        Every masked row holds the same vector and modulation, so all keep identical hidden
        states through every layer; one slot after the S real rows stands for all n - keep_k of
        them, with log(count) added to its attention logit. Rows >= keep_k of ``codes`` are
        ignored (bias -inf), so pass only the first max(keep_k) rows. Needs
        ``register_posemb_before_dropout`` (the released models).
        """
        if not self.config.register_posemb_before_dropout:
            raise ValueError("the collapsed decoder needs register_posemb_before_dropout=True")
        b, slots = codes.shape[:2]
        n = self.config.n_registers
        count = jnp.where(null_cond, n, n - keep_k)
        n_real = jnp.where(null_cond, 0, keep_k)[:, None]
        regs = jnp.where(null_cond[:, None, None], self.null_token.astype(self.dtype), self._embedded_codes(codes))
        rep = jnp.where(null_cond[:, None], self.null_token, self.mask_token).astype(self.dtype)
        slot_bias = jnp.where(jnp.arange(slots)[None, :] < n_real, 0.0, -jnp.inf)
        rep_bias = jnp.where(count > 0, jnp.log(jnp.maximum(count, 1).astype(jnp.float32)), -jnp.inf)
        bias = jnp.concatenate([jnp.broadcast_to(slot_bias, (b, slots)), rep_bias[:, None]], axis=1)
        return jnp.concatenate([regs, rep[:, None, :]], axis=1), bias.astype(jnp.float32)

    # ------------------------------------------------------------------ trunk
    def _trunk(self, packed: PackedPasses, t: jax.Array, grid: tuple[int, int]) -> tuple[list[jax.Array], jax.Array | None]:
        """-> (velocity [B, h, w, C] per pass, patch hidden states of pass 0 after block
        ``repa_layer`` [B, P, D] or None)."""
        cfg, depth = self.config, self.config.decoder.depth
        temb = self.time_embed(t)
        x = nn.with_logical_constraint(packed.x, ("act_batch", "act_seq", "act_embed"))
        features = None
        for i, block in enumerate(self.blocks):
            spans = packed.last_spans if i == depth - 1 else packed.spans
            x = block(x, temb, packed.segments, None, packed.key_bias, spans)
            x = nn.with_logical_constraint(x, ("act_batch", "act_seq", "act_embed"))
            if i == cfg.repa_layer:
                features = x[:, : packed.n_patches]
        shift, scale = jnp.split(self.head_adaln(nn.silu(temb)), 2, axis=-1)
        out = layer_norm(x) * (1 + scale[:, None]) + shift[:, None]  # x: the patch rows of each pass
        out = self.head(out)
        p = packed.n_patches
        velocities = [unpatchify(out[:, i * p : (i + 1) * p], grid, cfg.patch_size).astype(jnp.float32)
                      for i in range(packed.num_passes)]
        return velocities, features

    def _grid(self, x_t: jax.Array) -> tuple[int, int]:
        return x_t.shape[1] // self.config.patch_size[0], x_t.shape[2] // self.config.patch_size[1]

    def _single_pass(self, x_t, t, codes, keep_k, null_cond, collapse):
        b = x_t.shape[0]
        keep_k = jnp.broadcast_to(jnp.asarray(keep_k, jnp.int32), (b,))
        null_cond = jnp.zeros((b,), bool) if null_cond is None else null_cond
        if collapse:
            regs, bias = self.collapsed_registers(codes, keep_k, null_cond)
        else:
            regs, bias = self.registers(codes, keep_k, null_cond), None
        return self._trunk(pack_passes([(self.embed_patches(x_t), regs, bias)]), t, self._grid(x_t))

    # ------------------------------------------------------------------ entry points
    def velocity(
        self,
        x_t: jax.Array,
        t: jax.Array,
        codes: jax.Array,
        keep_k: jax.Array,
        null_cond: jax.Array | None = None,
        collapse: bool = False,
    ) -> jax.Array:
        """One forward -> velocity [B, h, w, C]. ``collapse`` computes the same with the exact
        shortcut (``collapsed_registers``; pass only the first max(keep_k) code rows)."""
        return self._single_pass(x_t, t, codes, keep_k, null_cond, collapse)[0][0]

    def velocity_with_null(
        self, x_t: jax.Array, t: jax.Array, codes: jax.Array, keep_k: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(conditional, null-condition) velocities from one forward: the null pass (the patches
        plus one null slot standing for all n registers) is packed after the collapsed
        conditional pass, so every projection and MLP runs once over both."""
        b = x_t.shape[0]
        keep_k = jnp.broadcast_to(jnp.asarray(keep_k, jnp.int32), (b,))
        patches = self.embed_patches(x_t)
        cond = self.collapsed_registers(codes, keep_k, jnp.zeros((b,), bool))
        null = self.collapsed_registers(codes[:, :0], keep_k, jnp.ones((b,), bool))
        (v_cond, v_null), _ = self._trunk(pack_passes([(patches, *cond), (patches, *null)]), t, self._grid(x_t))
        return v_cond, v_null

    def velocity_and_features(
        self, x_t: jax.Array, t: jax.Array, codes: jax.Array, keep_k: jax.Array, null_cond: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Training forward: (velocity [B, h, w, C], patch hidden states after block
        ``config.repa_layer`` [B, P, D] float32, for REPA)."""
        if self.config.repa_layer is None:
            raise ValueError("velocity_and_features needs config.repa_layer to be set")
        (velocity,), features = self._single_pass(x_t, t, codes, keep_k, null_cond, False)
        return velocity, features.astype(jnp.float32)
