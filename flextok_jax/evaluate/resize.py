"""Image resampling exactly as torch's ``F.interpolate`` does it (align_corners=False, no antialias).

The feature networks were trained and are evaluated with torch's resampling: pytorch-fid resizes
to 299 bilinearly, REPA and DINOv2 resize bicubically (Keys kernel, a = -0.75). Neither
antialiases when shrinking, whereas ``jax.image.resize`` does (and its bicubic uses a = -0.5).
Here each axis is resampled by a dense [out, in] weight matrix built once in float64 on the host
from torch's index rules, then applied as two matmuls: exact kernel placement, any size, and the
same code on every backend.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("bilinear", "bicubic")
CUBIC_A = -0.75  # torch's Keys-kernel parameter


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys weights of the taps at offsets -1, 0, 1, 2 for fractional positions t: [n] -> [n, 4]."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def output_size(in_size: int, scale_factor: float) -> int:
    """torch's output length for a given scale factor: floor(in_size * scale_factor)."""
    return int(math.floor(in_size * scale_factor))


def resize_matrix(in_size: int, out_size: int, method: str, scale_factor: float | None = None) -> np.ndarray:
    """[out_size, in_size] float64 resampling weights of torch's ``interpolate`` along one axis.

    Source coordinate of output pixel i: (i + 0.5) * s - 0.5 with s = 1 / scale_factor when a
    scale factor is given (as ``interpolate(scale_factor=...)`` maps it), else in/out.
    Bilinear clamps that coordinate at 0 and the upper neighbour at the border; bicubic clamps
    each of its four taps to the image (border replication). Rows sum to 1.
    """
    if method not in METHODS:
        raise ValueError(f"resize method must be one of {METHODS}, got {method!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    step = 1.0 / scale_factor if scale_factor else in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * step - 0.5
    rows = np.arange(out_size)
    weights = np.zeros((out_size, in_size), np.float64)
    if method == "bilinear":
        src = np.maximum(src, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = src - lo
        np.add.at(weights, (rows, lo), 1.0 - frac)
        np.add.at(weights, (rows, hi), frac)
    else:
        base = np.floor(src).astype(np.int64)
        taps = _cubic_weights(src - base)
        for j in range(4):
            np.add.at(weights, (rows, np.clip(base - 1 + j, 0, in_size - 1)), taps[:, j])
    return weights


def torch_resize(
    images: jax.Array,
    size: Sequence[int] | None = None,
    method: str = "bilinear",
    scale_factor: Sequence[float] | None = None,
) -> jax.Array:
    """Resize NHWC images [B, H, W, C] to [B, h, w, C] as ``F.interpolate(..., align_corners=False)``.

    Give ``size`` (h, w) or ``scale_factor`` (sy, sx) (then h = floor(H * sy), and coordinates
    map with 1/sy as in torch). Same-size resizing with ``size`` returns the input unchanged, as
    torch's kernels do. Matmuls run at HIGHEST precision (no bf16/tf32 passes on accelerators).
    """
    _, h_in, w_in, _ = images.shape
    if (size is None) == (scale_factor is None):
        raise ValueError("torch_resize needs exactly one of size and scale_factor")
    if size is not None:
        (h, w), (sy, sx) = size, (None, None)
    else:
        sy, sx = scale_factor
        h, w = output_size(h_in, sy), output_size(w_in, sx)
    if size is not None and (h, w) == (h_in, w_in):
        return images
    wy = jnp.asarray(resize_matrix(h_in, h, method, sy), images.dtype)
    wx = jnp.asarray(resize_matrix(w_in, w, method, sx), images.dtype)
    hp = jax.lax.Precision.HIGHEST
    out = jnp.einsum("oh,bhwc->bowc", wy, images, precision=hp)
    return jnp.einsum("pw,bowc->bopc", wx, out, precision=hp)
