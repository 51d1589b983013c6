"""Transformer building blocks shared by the FlexTok encoder and decoder.

Every parameter carries logical axis names (``embed``, ``heads``, ``mlp``, ...) so that the mesh
layout is a matter of configuration (see ``flextok_jax.parallel``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

LN_EPS = 1e-5


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    """Parameter-free LayerNorm over the last axis, computed in float32."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    name: str,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: Initializer = nn.initializers.xavier_uniform(),
) -> nn.Dense:
    """A Dense layer whose kernel ([in, out]) and bias ([out]) carry logical axis names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def mlp_hidden_dim(dim: int, mlp_ratio: float = 4.0) -> int:
    """SwiGLU hidden width: two thirds of ``mlp_ratio * dim``, so the FLOPs match a GELU MLP."""
    return int(2 * mlp_ratio * dim / 3)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: float,
    mask: jax.Array | None = None,
    key_bias: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention. q, k, v: [B, N, H, Dh]; mask: bool broadcastable to [B, H, N, N]
    (True = visible); key_bias: float [B, N] added to every query's logit. Returns [B, N, H, Dh].

    Heads-major einsums: on XLA:CPU these run ~2x faster than ``jax.nn.dot_product_attention``
    (whose [B, N, H, Dh] contractions get strided operands). Logits and softmax are float32
    even for bf16 compute, since the key_bias log-counts and the row sums need the range.
    """
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :].astype(jnp.float32)
    if mask is not None:
        # Finite fill keeps a fully masked row NaN-free (it then averages v uniformly).
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """Multi-head self-attention with QK-norm and the muP scale 8/head_dim.

    q, k, v, out projections have no bias; heads are split as (heads, head_dim), head outermost.
    """

    dim: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, key_bias: jax.Array | None = None
    ) -> jax.Array:
        """x: [B, N, D]; mask: bool, broadcastable to [B, heads, N, N] (True = visible);
        key_bias: float [B, N] added to every query's logit for that key. Returns [B, N, D]."""
        b, n, _ = x.shape
        heads = self.dim // self.head_dim

        def project(name: str) -> jax.Array:
            y = dense(self.dim, ("embed", "heads"), name=name, dtype=self.dtype)(x)
            return y.reshape(b, n, heads, self.head_dim)

        q, k, v = project("wq"), project("wk"), project("wv")
        q, k = layer_norm(q), layer_norm(k)
        out = attention(q, k, v, 8.0 / self.head_dim, mask, key_bias).reshape(b, n, self.dim)
        return dense(self.dim, ("heads", "embed"), name="proj", dtype=self.dtype)(out)


class SwiGLU(nn.Module):
    """fc2(silu(fc1 x) * fc3 x), no biases."""

    dim: int
    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D]."""
        h1 = dense(self.hidden, ("embed", "mlp"), name="fc1", dtype=self.dtype)(x)
        h3 = dense(self.hidden, ("embed", "mlp"), name="fc3", dtype=self.dtype)(x)
        return dense(self.dim, ("mlp", "embed"), name="fc2", dtype=self.dtype)(nn.silu(h1) * h3)


class Block(nn.Module):
    """Pre-norm transformer block: x += attn(LN x); x += mlp(LN x)."""

    dim: int
    head_dim: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, key_bias: jax.Array | None = None
    ) -> jax.Array:
        """x: [B, N, D] -> [B, N, D]."""
        x = x + Attention(self.dim, self.head_dim, self.dtype, name="attn")(
            layer_norm(x), mask, key_bias
        )
        return x + SwiGLU(self.dim, mlp_hidden_dim(self.dim, self.mlp_ratio), self.dtype, name="mlp")(
            layer_norm(x)
        )


def expand_segments(per_segment: jax.Array, lengths: Sequence[int]) -> jax.Array:
    """[B, S, ...] values, one per sub-sequence -> [B, sum(lengths), ...], repeated per token."""
    return jnp.repeat(per_segment, jnp.asarray(lengths), axis=1, total_repeat_length=sum(lengths))


class AdaLNBlock(nn.Module):
    """Transformer block with adaLN-zero modulation, one set per sub-sequence.

    The modulation MLP maps silu(temb) to [S, 6, D] with chunks ordered
    (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp), group s modulating
    the tokens of sub-sequence s (for FlexTok: s=0 patches, s=1 registers).
    """

    dim: int
    head_dim: int
    segment_lengths: tuple[int, ...]
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array,
        mask: jax.Array | None = None,
        key_bias: jax.Array | None = None,
    ) -> jax.Array:
        """x: [B, N, D] with N = sum(segment_lengths); temb: [B, D]. Returns [B, N, D]."""
        n_seg = len(self.segment_lengths)
        mod = dense(
            n_seg * 6 * self.dim,
            ("embed", "adaln"),
            name="adaln",
            use_bias=True,
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros_init(),
        )(nn.silu(temb))
        mod = mod.reshape(mod.shape[0], n_seg, 6, self.dim)
        mod = expand_segments(mod, self.segment_lengths)  # [B, N, 6, D]
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = (
            mod[:, :, i] for i in range(6)
        )
        h = layer_norm(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * Attention(self.dim, self.head_dim, self.dtype, name="attn")(
            h, mask, key_bias
        )
        h = layer_norm(x) * (1 + scale_mlp) + shift_mlp
        mlp = SwiGLU(self.dim, mlp_hidden_dim(self.dim, self.mlp_ratio), self.dtype, name="mlp")
        return x + gate_mlp * mlp(h)


def sincos_posemb_2d(grid_h: int, grid_w: int, dim: int) -> jax.Array:
    """Fixed 2D sin-cos table [grid_h, grid_w, dim]: [sin(r w), cos(r w), sin(c w), cos(c w)].

    w_k = 10000^(-k / (dim/4)), k < dim/4; the first half of the channels encodes the row.
    Computed in float64 and rounded once, as the official buffers are.
    """
    import numpy as np

    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows = np.arange(grid_h, dtype=np.float64)[:, None] * omega  # [gh, dim/4]
    cols = np.arange(grid_w, dtype=np.float64)[:, None] * omega
    row_emb = np.concatenate([np.sin(rows), np.cos(rows)], -1)[:, None, :]
    col_emb = np.concatenate([np.sin(cols), np.cos(cols)], -1)[None, :, :]
    table = np.concatenate(
        [np.broadcast_to(row_emb, (grid_h, grid_w, dim // 2)), np.broadcast_to(col_emb, (grid_h, grid_w, dim // 2))],
        -1,
    )
    return jnp.asarray(table, dtype=jnp.float32)


def patchify(x: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """[B, h, w, C] -> [B, (h/ph)*(w/pw), ph*pw*C], entries ordered (row, col, channel)."""
    b, h, w, c = x.shape
    ph, pw = patch
    x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(x: jax.Array, grid: tuple[int, int], patch: tuple[int, int]) -> jax.Array:
    """Inverse of ``patchify``: [B, gh*gw, ph*pw*C] -> [B, gh*ph, gw*pw, C]."""
    b = x.shape[0]
    gh, gw = grid
    ph, pw = patch
    c = x.shape[-1] // (ph * pw)
    x = x.reshape(b, gh, gw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * ph, gw * pw, c)
