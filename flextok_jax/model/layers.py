"""Transformer building blocks shared by the FlexTok encoder and decoder.

Every parameter carries logical axis names (``embed``, ``heads``, ``mlp``, ...) so that the mesh
layout is a matter of configuration (see ``flextok_jax.parallel``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

Dtype = Any
Initializer = Callable[..., jax.Array]

LN_EPS = 1e-5


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    """Parameter-free LayerNorm over the last axis, computed in float32."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RowDense(nn.Dense):
    """``nn.Dense`` over the rows of x: [..., in] is contracted as one [rows, in] matrix.

    Same parameters and result as ``nn.Dense``. XLA:CPU runs the backward of a dense layer on
    [B, T, in] activations (a dot over two batch-like dimensions) far below its 2-D matmul
    speed; measured on this project's 2-core CPU at [8, 256, 768]: a d12 SwiGLU MLP's forward +
    backward 285 ms as 3-D, 193 ms as rows; the generator's 64,000-id head with its
    cross-entropy gradient 3.37 s against 2.26 s.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        lead = inputs.shape[:-1]
        out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return out.reshape(*lead, out.shape[-1])


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    name: str | None = None,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: Initializer = nn.initializers.xavier_uniform(),
) -> RowDense:
    """A Dense layer whose kernel ([in, out]) and bias ([out]) carry logical axis names.

    ``name`` is None inside a module's ``setup`` (linen names it after the attribute). A
    ``RowDense``: the leading dimensions are flattened into rows for the matmul."""
    return RowDense(
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


# (query start, query count, key start, key count): one independent attention problem inside a
# token sequence. Several spans pack several sequences into one forward (block-diagonal
# attention without computing the zero blocks); a query range shorter than its key range computes
# only the rows a caller needs (the last block of a model whose head reads some rows only).
Span = tuple[int, int, int, int]


def take_rows(x: jax.Array, spans: Sequence[Span] | None) -> jax.Array:
    """The query rows of ``spans``, concatenated in span order. [B, N, ...] -> [B, Nq, ...]."""
    if spans is None:
        return x
    parts = [x[:, qs : qs + qn] for qs, qn, _, _ in spans]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def _softmax_attention(q, k, v, scale, mask, key_bias):
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :].astype(jnp.float32)
    if mask is not None:
        # Finite fill keeps a fully masked row NaN-free (it then averages v uniformly).
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: float,
    mask: jax.Array | None = None,
    key_bias: jax.Array | None = None,
    spans: Sequence[Span] | None = None,
) -> jax.Array:
    """Softmax attention. k, v: [B, N, H, Dh]; q: [B, Nq, H, Dh], the query rows of ``spans`` in
    span order (all N rows when ``spans`` is None). mask: bool broadcastable to [B, H, N, N], in
    full-sequence coordinates (True = visible); key_bias: float [B, N] added to every query's
    logit. Returns [B, Nq, H, Dh].

    Heads-major einsums: on XLA:CPU these run ~2x faster than ``jax.nn.dot_product_attention``
    (whose [B, N, H, Dh] contractions get strided operands). Logits and softmax are float32
    even for bf16 compute, since the key_bias log-counts and the row sums need the range.
    """
    n = k.shape[1]
    if spans is None:
        spans = ((0, n, 0, n),)
    if sum(qn for _, qn, _, _ in spans) != q.shape[1]:
        raise ValueError(f"q has {q.shape[1]} rows but the spans {spans} select {sum(s[1] for s in spans)}")
    outs, off = [], 0
    for qs, qn, ks, kn in spans:
        m = None if mask is None else mask[..., qs : qs + qn, ks : ks + kn]
        kb = None if key_bias is None else key_bias[:, ks : ks + kn]
        outs.append(_softmax_attention(q[:, off : off + qn], k[:, ks : ks + kn], v[:, ks : ks + kn], scale, m, kb))
        off += qn
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


class Attention(nn.Module):
    """Multi-head self-attention with QK-norm and the muP scale 8/head_dim.

    q, k, v, out projections have no bias; heads are split as (heads, head_dim), head outermost.
    """

    dim: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        key_bias: jax.Array | None = None,
        spans: Sequence[Span] | None = None,
    ) -> jax.Array:
        """x: [B, N, D]; mask: bool, broadcastable to [B, heads, N, N] (True = visible);
        key_bias: float [B, N] added to every query's logit for that key; spans: see ``Span``.
        Returns [B, Nq, D] for the query rows of ``spans`` (all N by default)."""
        b = x.shape[0]
        heads = self.dim // self.head_dim

        def project(name: str, rows: jax.Array) -> jax.Array:
            y = dense(self.dim, ("embed", "heads"), name=name, dtype=self.dtype)(rows)
            return y.reshape(b, rows.shape[1], heads, self.head_dim)

        q, k, v = project("wq", take_rows(x, spans)), project("wk", x), project("wv", x)
        q, k = layer_norm(q), layer_norm(k)
        out = attention(q, k, v, 8.0 / self.head_dim, mask, key_bias, spans)
        out = out.reshape(b, q.shape[1], self.dim)
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
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        key_bias: jax.Array | None = None,
        spans: Sequence[Span] | None = None,
    ) -> jax.Array:
        """x: [B, N, D] -> [B, Nq, D], the query rows of ``spans`` (all N by default)."""
        x = take_rows(x, spans) + Attention(self.dim, self.head_dim, self.dtype, name="attn")(
            layer_norm(x), mask, key_bias, spans
        )
        return x + SwiGLU(self.dim, mlp_hidden_dim(self.dim, self.mlp_ratio), self.dtype, name="mlp")(
            layer_norm(x)
        )


def row_groups(
    lengths: Sequence[int], groups: Sequence[int] | None = None, spans: Sequence[Span] | None = None
) -> tuple[tuple[int, int], ...]:
    """(row count, group) runs of a sequence of segments (``lengths[s]`` rows of group
    ``groups[s]``, default s), or of the query rows of ``spans`` in ``take_rows`` order."""
    groups = tuple(range(len(lengths))) if groups is None else tuple(groups)
    starts = np.cumsum([0, *lengths])
    if spans is None:
        spans = ((0, int(starts[-1]), 0, 0),)
    runs = []
    for qs, qn, _, _ in spans:
        for lo, hi, g in zip(starts[:-1], starts[1:], groups):
            n = min(hi, qs + qn) - max(lo, qs)
            if n > 0:
                runs.append((int(n), g))
    return tuple(runs)


def per_group(x: jax.Array, runs: Sequence[tuple[int, int]], fn: Callable[[jax.Array, int], jax.Array]) -> jax.Array:
    """fn(rows, group) on each run of rows of x [B, N, ...] (``row_groups``), concatenated.

    Static slices rather than a per-token [B, N, ...] table of the group's values (a gather or a
    broadcast that XLA:CPU materialises, ~5% of a decoder forward): each slice's arithmetic fuses
    into the one concatenation.
    """
    parts, off = [], 0
    for n, g in runs:
        parts.append(fn(x[:, off : off + n], g))
        off += n
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


# The rows of a token sequence as segments: (lengths, groups); segment s has lengths[s] rows
# modulated by group groups[s].
Segments = tuple[tuple[int, ...], tuple[int, ...]]


class AdaLNBlock(nn.Module):
    """Transformer block with adaLN-zero modulation, one set per group of sub-sequences.

    The modulation MLP maps silu(temb) to [G, 6, D] with chunks ordered
    (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp). For FlexTok, group 0
    modulates patches and group 1 registers; two packed passes are segments
    (patches, registers, patches, registers) with groups (0, 1, 0, 1).
    """

    dim: int
    head_dim: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    num_groups: int = 2

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array,
        segments: Segments,
        mask: jax.Array | None = None,
        key_bias: jax.Array | None = None,
        spans: Sequence[Span] | None = None,
    ) -> jax.Array:
        """x: [B, N, D] with N = sum(segment lengths); temb: [B, D]. Returns [B, Nq, D], the
        query rows of ``spans`` (all N by default)."""
        lengths, groups = segments
        mod = dense(
            self.num_groups * 6 * self.dim,
            ("embed", "adaln"),
            name="adaln",
            use_bias=True,
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros_init(),
        )(nn.silu(temb))
        mod = mod.reshape(mod.shape[0], self.num_groups, 6, self.dim)[:, :, :, None, :]  # [B, G, 6, 1, D]
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = (mod[:, :, i] for i in range(6))
        all_rows = row_groups(lengths, groups)
        out_rows = row_groups(lengths, groups, spans)

        h = per_group(layer_norm(x), all_rows, lambda v, g: v * (1 + scale_msa[:, g]) + shift_msa[:, g])
        attn = Attention(self.dim, self.head_dim, self.dtype, name="attn")(h, mask, key_bias, spans)
        x = take_rows(x, spans) + per_group(attn, out_rows, lambda v, g: gate_msa[:, g] * v)
        h = per_group(layer_norm(x), out_rows, lambda v, g: v * (1 + scale_mlp[:, g]) + shift_mlp[:, g])
        mlp = SwiGLU(self.dim, mlp_hidden_dim(self.dim, self.mlp_ratio), self.dtype, name="mlp")(h)
        return x + per_group(mlp, out_rows, lambda v, g: gate_mlp[:, g] * v)


def sincos_posemb_2d(grid_h: int, grid_w: int, dim: int) -> jax.Array:
    """Fixed 2D sin-cos table [grid_h, grid_w, dim]: [sin(r w), cos(r w), sin(c w), cos(c w)].

    w_k = 10000^(-k / (dim/4)), k < dim/4; the first half of the channels encodes the row.
    Computed in float64 and rounded once, as the official buffers are.
    """
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
    return rearrange(x, "b (gh ph) (gw pw) c -> b (gh gw) (ph pw c)", ph=patch[0], pw=patch[1])


def unpatchify(x: jax.Array, grid: tuple[int, int], patch: tuple[int, int]) -> jax.Array:
    """Inverse of ``patchify``: [B, gh*gw, ph*pw*C] -> [B, gh*ph, gw*pw, C]."""
    return rearrange(x, "b (gh gw) (ph pw c) -> b (gh ph) (gw pw) c", gh=grid[0], gw=grid[1], ph=patch[0], pw=patch[1])
