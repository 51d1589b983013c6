"""Winograd 3x3 convolutions (flextok_jax.model.winograd) and the VAE's conv_impl switch."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flextok_jax.model.vae import AutoencoderKL, Conv, VAEConfig
from flextok_jax.model.winograd import WINOGRAD_MATRICES, winograd_conv3x3

# Max |winograd - reference| / max |reference| in float32. F(2x2,3x3) only adds/subtracts
# and halves, so it matches the direct conv to a few float32 ulps of the output scale
# (measured <= 3e-7 at Cin <= 512); F(4x4,3x3) amplifies rounding (measured 1e-6..2e-5).
F2_TOL = 2e-6
F4_TOL = 5e-5
# Whole VAE at a small config, random weights, winograd vs direct (float32).
VAE_TOL = 1e-5


def _reference_f64(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 'same' conv as 9 shifted float64 matmuls: independent of XLA's conv."""
    bsz, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((bsz, h, w, k.shape[3]))
    for i in range(3):
        for j in range(3):
            y += xp[:, i : i + h, j : j + w] @ k[i, j].astype(np.float64)
    return y + b


def _lax_conv(x, k, b):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def _data(shape, seed=0):
    b, h, w, ci, co = shape
    r = np.random.default_rng(seed)
    x = r.standard_normal((b, h, w, ci)).astype(np.float32)
    k = (r.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32)
    bias = r.standard_normal(co).astype(np.float32)
    return x, k, bias


def _rel(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


SHAPES = [
    (1, 1, 1, 4, 4),  # one pixel
    (1, 5, 7, 3, 4),  # odd H and W
    (2, 8, 8, 16, 8),  # even, batch 2
    (3, 9, 4, 32, 16),  # odd H, batch 3
    (2, 37, 23, 64, 32),  # several chunks with ragged last chunk
    (1, 32, 32, 256, 128),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("chunk_bytes", [None, 1, 64 << 10])
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_matches_float64_and_lax(shape, chunk_bytes, m):
    x, k, b = _data(shape)
    fn = jax.jit(functools.partial(winograd_conv3x3, m=m, chunk_bytes=chunk_bytes))
    y = np.asarray(fn(x, k, b))
    assert y.shape == shape[:3] + (shape[4],) and y.dtype == np.float32
    ref64 = _reference_f64(x, k, b)
    tol = F2_TOL if m == 2 else F4_TOL
    assert _rel(y, ref64) < tol
    direct = np.asarray(jax.jit(_lax_conv)(x, k, b)).astype(np.float64)
    assert _rel(y, direct) < tol + 1e-6


def test_winograd_transform_matrices_are_exact_1d():
    # Aᵀ[(G g) ⊙ (Bᵀ d)] is the valid 1-D correlation of d with g.
    r = np.random.default_rng(1)
    for m, (bt, g, at) in WINOGRAD_MATRICES.items():
        d, w = r.standard_normal(m + 2), r.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), np.correlate(d, w, "valid"), rtol=1e-12, atol=1e-12)


def test_winograd_no_bias_and_bfloat16():
    x, k, b = _data((2, 9, 10, 32, 16), seed=3)
    y = np.asarray(jax.jit(winograd_conv3x3)(x, k))
    assert _rel(y, _reference_f64(x, k, 0.0)) < F2_TOL
    yb = jax.jit(winograd_conv3x3)(jnp.asarray(x, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16), b)
    assert yb.dtype == jnp.bfloat16
    ref = _reference_f64(x, k, b)
    assert _rel(np.asarray(yb.astype(jnp.float32)), ref) < 3e-2  # a few bf16 ulps


def test_winograd_rejects_bad_shapes():
    with pytest.raises(ValueError):
        winograd_conv3x3(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 4, 8)))
    with pytest.raises(ValueError):
        winograd_conv3x3(jnp.zeros((1, 4, 4, 3)), jnp.zeros((5, 5, 3, 8)))
    with pytest.raises(ValueError):
        winograd_conv3x3(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 8)), m=3)


# ------------------------------------------------------------------------------ VAE switch

SMALL = VAEConfig(latent_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8)


@pytest.fixture(scope="module")
def small_vars():
    x = jnp.zeros((1, 8, 8, 3))
    v = AutoencoderKL(SMALL, conv_impl="direct").init(jax.random.key(0), x)
    # Non-zero biases and non-trivial GroupNorm affine params, so every term is exercised.
    leaves, tree = jax.tree_util.tree_flatten(v)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [l + 0.1 * jax.random.normal(kk, l.shape) for l, kk in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _enc_dec(impl, min_ch, dtype, variables, images, latents):
    model = AutoencoderKL(SMALL, dtype=dtype, conv_impl=impl, winograd_min_channels=min_ch)
    enc = jax.jit(lambda v, x: model.apply(v, x, method=AutoencoderKL.encode))
    dec = jax.jit(lambda v, z: model.apply(v, z, method=AutoencoderKL.decode))
    mean, logvar = enc(variables, images)
    return np.asarray(mean), np.asarray(logvar), np.asarray(dec(variables, latents))


def test_param_tree_identical_across_impls():
    x = jnp.zeros((1, 8, 8, 3))
    trees = {}
    for impl, mc in (("direct", 256), ("winograd", 1), ("winograd", 256)):
        v = AutoencoderKL(SMALL, conv_impl=impl, winograd_min_channels=mc).init(jax.random.key(0), x)
        trees[(impl, mc)] = v
    ref = trees[("direct", 256)]
    for v in trees.values():
        assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(ref)
        # Same initialisers and RNG streams: identical values, not just shapes.
        for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # Same logical axis names (boxed metadata).
        flat = jax.tree_util.tree_flatten_with_path(v, is_leaf=lambda t: hasattr(t, "names"))[0]
        flat_ref = jax.tree_util.tree_flatten_with_path(ref, is_leaf=lambda t: hasattr(t, "names"))[0]
        assert [(p, getattr(l, "names", None)) for p, l in flat] == [
            (p, getattr(l, "names", None)) for p, l in flat_ref
        ]


def test_conv3x3_module_axes():
    v = Conv(8, method="winograd").init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
    assert v["kernel"].names == (None, None, "conv_in", "conv_out")
    assert v["bias"].names == ("conv_out",)
    assert v["kernel"].value.shape == (3, 3, 3, 8) and v["bias"].value.shape == (8,)


@pytest.mark.parametrize("batch,side", [(1, 16), (2, 24)])
def test_vae_winograd_matches_direct(small_vars, batch, side):
    r = np.random.default_rng(0)
    images = r.uniform(-1, 1, (batch, side, side, 3)).astype(np.float32)
    latents = r.standard_normal((batch, side // 2, side // 2, 4)).astype(np.float32)
    ref = _enc_dec("direct", 256, jnp.float32, small_vars, images, latents)
    got = _enc_dec("winograd", 1, jnp.float32, small_vars, images, latents)  # every 3x3 s1 conv
    for g, rr in zip(got, ref):
        assert np.abs(g - rr).max() <= VAE_TOL * max(1.0, np.abs(rr).max())


def test_vae_winograd_bfloat16(small_vars):
    r = np.random.default_rng(1)
    images = r.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    latents = r.standard_normal((1, 8, 8, 4)).astype(np.float32)
    ref = _enc_dec("direct", 256, jnp.float32, small_vars, images, latents)
    got = _enc_dec("winograd", 1, jnp.bfloat16, small_vars, images, latents)
    for g, rr in zip(got, ref):
        assert g.dtype == np.float32 and np.isfinite(g).all()
        assert np.abs(g - rr).max() <= 0.1 * max(1.0, np.abs(rr).max())


def test_vae_rejects_unknown_impl(small_vars):
    with pytest.raises(ValueError, match="conv_impl"):
        AutoencoderKL(SMALL, conv_impl="fft").apply(small_vars, jnp.zeros((1, 8, 8, 3)))


def test_conv_rejects_methods_that_do_not_fit():
    x = jnp.zeros((1, 4, 4, 3))
    for bad in (Conv(8, 3, 2, method="winograd"), Conv(8, 3, method="matmul"), Conv(8, method="fft")):
        with pytest.raises(ValueError, match="method"):
            bad.init(jax.random.key(0), x)
    # The 1x1 matmul equals the direct 1x1 conv.
    v = Conv(8, 1).init(jax.random.key(0), x)
    xr = jax.random.normal(jax.random.key(1), (1, 4, 4, 3))
    np.testing.assert_allclose(Conv(8, 1, method="matmul").apply(v, xr), Conv(8, 1).apply(v, xr), atol=1e-6)
