"""Winograd F(m×m, 3×3) convolution for 3×3, stride-1, pad-1 convs, channels-last.

A direct 3×3 conv spends 9 multiply-adds per output pixel and channel pair. Winograd's
minimal filtering algorithm computes each m×m output tile from an (m+2)×(m+2) input tile
with (m+2)² multiplies per channel pair instead of 9m²:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A      per (input channel, output channel) pair,

where the sum over input channels is done, for each of the (m+2)² positions of the
transformed tile, as one [tiles, Cin] @ [Cin, Cout] matmul. F(2×2,3×3) (m=2) saves 2.25×
of the multiplies, F(4×4,3×3) (m=4) 4×. The input and output transforms are short sums
of the tile entries with small integer coefficients; the filter transform is tiny.

Two CPU-specific choices matter as much as the FLOP count:

* The transformed tiles are (m+2)²/m² times larger than the activation (4× for m=2,
  2.25× for m=4). Materialising them for a whole 256×256 feature map means hundreds of MB
  of freshly allocated (page-faulting) memory per call, which cost more than the saved
  multiplies. So the feature map is processed in chunks of tile rows inside a
  ``fori_loop``: each chunk's transformed tiles are small, stay in cache and reuse the
  same buffers, and each chunk's output is written in place into the result.
* Transforms use plain (strided) slices and adds, no gathers, so XLA fuses them.

Rounding: F(2×2,3×3)'s matrices have entries in {0, ±1, ±1/2}, so in float32 it differs
from the direct conv by ~1e-7 relative. F(4×4,3×3) (points 0, ±1, ±2) amplifies rounding
by its larger transform coefficients: ~1e-6 relative to the output's scale in float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["winograd_conv3x3", "winograd_filter", "WINOGRAD_MATRICES"]

# (Bᵀ, G, Aᵀ) for F(m×m, 3×3), keyed by the output tile size m.
WINOGRAD_MATRICES: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array(
            [
                [4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1],
            ],
            np.float64,
        ),
        np.array(
            [
                [1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1],
            ],
            np.float64,
        ),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
    ),
}


def _combine(mat: np.ndarray, parts: Sequence[jax.Array]) -> list[jax.Array]:
    """[Σ_j mat[i, j] · parts[j] for each row i], skipping zeros and multiplies by ±1."""
    out = []
    for row in mat:
        acc = None
        for coef, p in zip(row, parts):
            if coef == 0:
                continue
            if acc is None:
                acc = p if coef == 1 else (-p if coef == -1 else p * np.asarray(coef, p.dtype))
            elif coef == 1:
                acc = acc + p
            elif coef == -1:
                acc = acc - p
            else:
                acc = acc + p * np.asarray(coef, p.dtype)
        out.append(acc)
    return out


def winograd_filter(kernel: jax.Array, m: int = 2) -> jax.Array:
    """G g Gᵀ of an HWIO kernel [3,3,Cin,Cout] → [(m+2)², Cin, Cout] (index (m+2)·row + col)."""
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"expected a [3,3,Cin,Cout] kernel, got shape {kernel.shape}")
    g = WINOGRAD_MATRICES[m][1]
    rows = _combine(g, [kernel[0], kernel[1], kernel[2]])  # each [3(kw), Cin, Cout]
    tiles = []
    for r in rows:
        tiles.extend(_combine(g, [r[0], r[1], r[2]]))
    return jnp.stack(tiles, axis=0)


def _chunk(xs: jax.Array, u: jax.Array, m: int, r: int, nw: int, precision: Any, pet: Any) -> jax.Array:
    """Winograd conv of one chunk of r tile rows.

    xs: [B, m·r+2, m·nw+2, Cin], already zero-padded → [B, m·r, m·nw, Cout].
    """
    bt, _, at = WINOGRAD_MATRICES[m]
    n = m + 2
    b, cin = xs.shape[0], xs.shape[-1]
    rows = _combine(bt, [xs[:, q : q + m * r : m] for q in range(n)])  # each [B, r, m·nw+2, Cin]
    v = []
    for t in rows:
        v.extend(_combine(bt, [t[:, :, c : c + m * nw : m] for c in range(n)]))  # each [B, r, nw, Cin]
    v = jnp.stack(v, axis=0).reshape(n * n, b * r * nw, cin)
    mm = jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision, preferred_element_type=pet)
    cout = mm.shape[-1]
    mm = mm.reshape(n, n, b, r, nw, cout)
    cols = [_combine(at, [mm[q, c] for c in range(n)]) for q in range(n)]  # cols[q][c'] : row q, out col c'
    outs = [_combine(at, [cols[q][c] for q in range(n)]) for c in range(m)]  # outs[c'][a'] : [B, r, nw, Cout]
    # y[b, m·i + a', m·j + c'] = outs[c'][a'][b, i, j]
    y = jnp.stack([jnp.stack([outs[c][a] for c in range(m)], axis=3) for a in range(m)], axis=2)
    return y.reshape(b, m * r, m * nw, cout)


def winograd_conv3x3(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    m: int = 2,
    chunk_bytes: int | None = 4 << 20,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """3×3 stride-1 conv with zero padding 1 on every side, via Winograd F(m×m, 3×3).

    Args:
      x: [B, H, W, Cin] input (any H, W ≥ 1; sizes that are not multiples of m are padded).
      kernel: [3, 3, Cin, Cout] HWIO kernel (flax ``nn.Conv`` layout).
      bias: optional [Cout], added to the output.
      m: output tile size, 2 (F(2×2,3×3)) or 4 (F(4×4,3×3)).
      chunk_bytes: target size of one chunk's transformed input tiles; the feature map is
        processed in chunks of whole tile rows of about this size (at least one tile row).
        None processes everything at once.
      precision: passed to the tile matmul (``jax.lax.dot_general``).
      preferred_element_type: accumulation/output dtype of the tile matmul.

    Returns:
      [B, H, W, Cout], equal to ``lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias`` up to float rounding, in the
      result dtype of ``x`` and ``kernel``.
    """
    if m not in WINOGRAD_MATRICES:
        raise ValueError(f"m must be one of {sorted(WINOGRAD_MATRICES)}, got {m}")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
        raise ValueError(f"expected x [B,H,W,Cin] and kernel [3,3,Cin,Cout]; got {x.shape}, {kernel.shape}")
    b, h, w, cin = x.shape
    if kernel.shape[2] != cin:
        raise ValueError(f"kernel has {kernel.shape[2]} input channels but x has {cin}")
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    x = x.astype(dtype)
    n = m + 2
    nh, nw = -(-h // m), -(-w // m)  # output tiles along each axis

    # Filter transform in (at least) float32, rounded once to the compute dtype.
    u = winograd_filter(kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32)), m).astype(dtype)

    row_bytes = b * nw * n * n * cin * jnp.dtype(dtype).itemsize
    r = nh if chunk_bytes is None else int(min(nh, max(1, chunk_bytes // row_bytes)))
    nchunks = -(-nh // r)
    wpad = (1, 1 + m * nw - w)
    step = m * r  # image rows per chunk

    def finish(y):  # crop columns, add bias
        y = y[:, :, :w]
        return y if bias is None else y + bias.astype(y.dtype)

    if nchunks == 1:
        xp = jnp.pad(x, ((0, 0), (1, 1 + step - h), wpad, (0, 0)))
        return finish(_chunk(xp, u, m, r, nw, precision, preferred_element_type))[:, :h]

    def rows_at(lo: int, hi: int) -> jax.Array:
        """x rows [lo, hi) with zero rows outside [0, h), columns padded."""
        xs = x[:, max(lo, 0) : min(hi, h)]
        return jnp.pad(xs, ((0, 0), (max(0, -lo), max(0, hi - h)), wpad, (0, 0)))

    def conv_chunk(xs):
        return finish(_chunk(xs, u, m, r, nw, precision, preferred_element_type))

    # The first and last chunks read the zero padding; the ones in between read x directly,
    # so x is never copied into a padded buffer.
    last = step * (nchunks - 1)
    y = jnp.zeros((b, h, w, kernel.shape[3]), dtype)
    y = jax.lax.dynamic_update_slice_in_dim(y, conv_chunk(rows_at(-1, step + 1)), 0, axis=1)

    def body(i, y):
        xs = jax.lax.dynamic_slice_in_dim(x, i * step - 1, step + 2, axis=1)
        xs = jnp.pad(xs, ((0, 0), (0, 0), wpad, (0, 0)))
        return jax.lax.dynamic_update_slice_in_dim(y, conv_chunk(xs), i * step, axis=1)

    if nchunks > 2:
        y = jax.lax.fori_loop(1, nchunks - 1, body, y)
    tail = conv_chunk(rows_at(last - 1, last + step + 1))[:, : h - last]
    return jax.lax.dynamic_update_slice_in_dim(y, tail, last, axis=1)
