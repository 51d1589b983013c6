"""Issue 5: exact fast inference.

Truncated tokenization equals a prefix of the full run; the collapsed decoder (one slot standing
for all masked registers, with log(count) on its logit) equals the plain one; the bucketed,
collapsed sampler equals the plain sampler.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig
from flextok_jax.benchmarks.models import random_params
from flextok_jax.model.flextok import register_buckets
from flextok_jax.model.fsq import ids_to_codes
from helpers import max_err

COLLAPSE_TOL = 1e-5
SHORTCUT_TOL = 1e-4


def small_config(**changes) -> FlexTokConfig:
    """Pixel-space model with many registers relative to its 16 patches."""
    t = TransformerConfig(dim=96, depth=2, head_dim=32)
    cfg = FlexTokConfig(encoder=t, decoder=t, n_registers=64, latent_channels=3, patch_grid=(4, 4), vae=None)
    return cfg.replace(**changes)


@pytest.fixture(scope="module")
def small():
    model = FlexTok(small_config())
    return model, random_params(model, seed=1)


def random_images(model: FlexTok, batch: int, seed: int = 0) -> jax.Array:
    h, w = model.config.image_size
    return jax.random.uniform(jax.random.key(seed), (batch, h, w, 3), minval=-1.0, maxval=1.0)


def random_codes(model: FlexTok, batch: int, seed: int = 0) -> jax.Array:
    ids = jax.random.randint(jax.random.key(seed), (batch, model.config.n_registers), 0, model.config.vocab_size)
    return ids_to_codes(ids, model.config.fsq_levels)


def random_x_t(model: FlexTok, batch: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(seed), (batch,) + model.latent_shape)
    t = jax.random.uniform(jax.random.key(seed + 1), (batch,))
    return x, t


def check_collapse(model: FlexTok, params, keep, slots: int, null: bool = False) -> float:
    """Max abs difference between the plain and the collapsed velocity."""
    keep = jnp.asarray(keep, jnp.int32)
    b = keep.shape[0]
    x, t = random_x_t(model, b, seed=int(keep.sum()))
    codes = random_codes(model, b, seed=3)
    null_cond = jnp.full((b,), null)
    velocity = jax.jit(model.velocity, static_argnums=(6,))  # eager flax dispatch is slow
    plain = velocity(params, x, t, codes, keep, null_cond, False)
    fast = velocity(params, x, t, codes[:, :slots], keep, null_cond, True)
    assert fast.shape == plain.shape
    return max_err(fast, plain)


def model_cases():
    return ["tiny", "small"]


@pytest.fixture
def case(request, tiny, small):
    return tiny if request.param == "tiny" else small


@pytest.mark.parametrize("case", model_cases(), indirect=True)
def test_tokenize_prefix(case):
    model, params = case
    n = model.config.n_registers
    images = random_images(model, 2)
    full = np.asarray(model.tokenize(params, images))
    assert full.shape == (2, n) and len(np.unique(full)) > n // 2
    for k in sorted({1, 2, 3, n // 2, n - 1, n}):
        ids = np.asarray(model.tokenize(params, images, num_tokens=k))
        np.testing.assert_array_equal(ids, full[:, :k])


@pytest.mark.parametrize("case", model_cases(), indirect=True)
def test_collapse_uniform_k(case):
    model, params = case
    n = model.config.n_registers
    for k in sorted({1, 2, 5, n // 2, n - 1, n}):
        # Exactly k rows, and the power-of-two bucket the sampler passes.
        for slots in sorted({k, int(register_buckets(np.array([k]), n)[0])}):
            err = check_collapse(model, params, [k, k], slots)
            assert err <= COLLAPSE_TOL, (k, slots, err)


@pytest.mark.parametrize("case", model_cases(), indirect=True)
def test_collapse_mixed_k(case):
    model, params = case
    n = model.config.n_registers
    keep = [1, n, 3, n // 2 + 1]
    assert check_collapse(model, params, keep, n) <= COLLAPSE_TOL
    assert check_collapse(model, params, [2, 3, 1], 4) <= COLLAPSE_TOL


@pytest.mark.parametrize("case", model_cases(), indirect=True)
def test_collapse_null_pass(case):
    model, params = case
    n = model.config.n_registers
    # No code rows at all (as the sampler runs it), and rows that must all be ignored.
    for slots in (0, 4, n):
        assert check_collapse(model, params, [1, n], slots, null=True) <= COLLAPSE_TOL


@pytest.mark.parametrize("case", model_cases(), indirect=True)
def test_packed_null_pass_matches_separate_passes(case):
    """velocity_with_null: the conditional and null passes packed in one forward equal two forwards."""
    model, params = case
    n = model.config.n_registers
    velocity = jax.jit(model.velocity, static_argnums=(6,))
    with_null = jax.jit(model.velocity_with_null)
    for keep, slots in (([1, 1], 1), ([2, 3], 4), ([1, n, 5], n), ([n, n], n)):
        keep = jnp.asarray(keep, jnp.int32)
        b = keep.shape[0]
        x, t = random_x_t(model, b, seed=slots)
        codes = random_codes(model, b, seed=5)[:, :slots]
        v_cond, v_null = with_null(params, x, t, codes, keep)
        alone_cond = velocity(params, x, t, codes, keep, None, True)
        alone_null = velocity(params, x, t, codes[:, :0], keep, jnp.ones((b,), bool), True)
        assert max_err(v_cond, alone_cond) <= COLLAPSE_TOL, (keep, slots)
        assert max_err(v_null, alone_null) <= COLLAPSE_TOL, (keep, slots)


def test_collapse_parity_fixture(tiny, parity_io):
    """The collapsed forward reproduces the official decoder outputs too."""
    model, params = tiny
    x = jnp.asarray(parity_io["dec_noised_latents"].transpose(0, 2, 3, 1))
    t, keep = jnp.asarray(parity_io["dec_t"]), jnp.asarray(parity_io["dec_keep_k"])
    codes = jnp.asarray(parity_io["fsq_codes"])
    v = model.velocity(params, x, t, codes, keep, collapse=True)
    assert max_err(v.transpose(0, 3, 1, 2), parity_io["dec_velocity"]) <= 1e-4
    v0 = model.velocity(params, x, t, codes[:, :0], keep, jnp.ones((2,), bool), collapse=True)
    assert max_err(v0.transpose(0, 3, 1, 2), parity_io["dec_velocity_null"]) <= 1e-4
    v, v0 = model.velocity_with_null(params, x, t, codes, keep)
    assert max_err(v.transpose(0, 3, 1, 2), parity_io["dec_velocity"]) <= 1e-4
    assert max_err(v0.transpose(0, 3, 1, 2), parity_io["dec_velocity_null"]) <= 1e-4


@pytest.mark.parametrize("case", model_cases(), indirect=True)
@pytest.mark.parametrize("guidance,scale", [("cfg", 1.0), ("cfg", 3.0), ("apg", 3.0)])
def test_shortcut_sampler_matches_plain(case, guidance, scale):
    model, params = case
    n = model.config.n_registers
    keep = np.array([1, n, 3, n // 2 + 1, 3], np.int32)  # three buckets, out of order
    tokens = np.asarray(model.tokenize(params, random_images(model, len(keep))))
    kwargs = dict(keep_k=keep, num_steps=3, guidance_scale=scale, guidance=guidance, rng=jax.random.key(4))
    fast = model.sample_latents(params, tokens, **kwargs)
    plain = model.sample_latents(params, tokens, exact_shortcut=False, **kwargs)
    assert fast.shape == plain.shape
    assert max_err(fast, plain) <= SHORTCUT_TOL


def test_shortcut_detokenize_matches_plain(tiny, parity_io):
    model, params = tiny
    tokens = parity_io["token_ids"]
    kwargs = dict(keep_k=np.array([5, 16]), num_steps=4, guidance_scale=3.0,
                  noise=parity_io["detok_noise"].transpose(0, 2, 3, 1))
    fast = model.detokenize(params, tokens, **kwargs)
    plain = model.detokenize(params, tokens, exact_shortcut=False, **kwargs)
    assert max_err(fast, plain) <= SHORTCUT_TOL


def test_fallback_without_posemb_before_dropout():
    """With the posemb added after dropout the masked rows differ, so no collapse is possible."""
    model = FlexTok(small_config(register_posemb_before_dropout=False))
    params = random_params(model, seed=2)
    x, t = random_x_t(model, 2)
    codes = random_codes(model, 2)
    with pytest.raises(ValueError, match="register_posemb_before_dropout"):
        model.velocity(params, x, t, codes[:, :4], jnp.array([2, 4]), collapse=True)
    tokens = np.asarray(model.tokenize(params, random_images(model, 2)))
    kwargs = dict(keep_k=np.array([2, 40]), num_steps=2, guidance_scale=2.0, rng=jax.random.key(0))
    fast = model.sample_latents(params, tokens, **kwargs)
    plain = model.sample_latents(params, tokens, exact_shortcut=False, **kwargs)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(plain))


def test_register_buckets():
    np.testing.assert_array_equal(register_buckets(np.array([1, 2, 3, 5, 64, 65, 256]), 100),
                                  [1, 2, 4, 8, 64, 100, 100])


def test_sampler_compiles_once_per_bucket(small):
    """Same shapes, same bucket: the second call reuses the compiled program."""
    model, params = small
    tokens = np.zeros((2, 8), np.int32)
    model.sample_latents(params, tokens, keep_k=np.array([5, 7]), num_steps=2)
    before = model._sample_jit._cache_size()
    model.sample_latents(params, tokens + 1, keep_k=np.array([6, 8]), num_steps=2)
    assert model._sample_jit._cache_size() == before


def attention_reference(q, k, v, scale, mask, key_bias, spans):
    """float64 numpy: each span's queries attend to its keys only."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    mask = np.broadcast_to(np.asarray(mask), (q.shape[0], q.shape[2], k.shape[1], k.shape[1]))
    outs, off = [], 0
    for qs, qn, ks, kn in spans:
        logits = np.einsum("bqhd,bkhd->bhqk", q[:, off : off + qn], k[:, ks : ks + kn]) * scale
        logits = logits + np.asarray(key_bias, np.float64)[:, None, None, ks : ks + kn]
        logits = np.where(mask[:, :, qs : qs + qn, ks : ks + kn], logits, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        outs.append(np.einsum("bhqk,bkhd->bqhd", p, v[:, ks : ks + kn]))
        off += qn
    return np.concatenate(outs, axis=1)


def test_attention_spans_match_float64_reference():
    """Packed sequences and query-row subsets, with a mask and a key bias (tolerance 1e-5)."""
    from flextok_jax.model.layers import attention

    b, n, h, dh = 2, 11, 3, 8
    q_all, k, v = (jax.random.normal(jax.random.key(i), (b, n, h, dh)) for i in range(3))
    bias = jax.random.normal(jax.random.key(3), (b, n))
    mask = jnp.tril(jnp.ones((n, n), bool)) | (jnp.arange(n)[None, :] < 3)
    for spans in (((0, n, 0, n),), ((0, 6, 0, 6), (6, 5, 6, 5)), ((0, 2, 0, 6), (6, 3, 6, 5)), ((4, 3, 0, 11),)):
        q = jnp.concatenate([q_all[:, qs : qs + qn] for qs, qn, _, _ in spans], axis=1)
        got = attention(q, k, v, 0.3, mask[None, None], bias, spans)
        want = attention_reference(q, k, v, 0.3, mask[None, None], bias, spans)
        assert got.shape == want.shape
        assert max_err(got, want) <= 1e-5, spans
    with pytest.raises(ValueError, match="rows"):
        attention(q_all, k, v, 0.3, spans=((0, 4, 0, n),))


def test_row_groups_follow_segments_and_spans():
    from flextok_jax.model.layers import row_groups

    lengths, groups = (4, 3, 4, 1), (0, 1, 0, 1)
    assert row_groups(lengths, groups) == ((4, 0), (3, 1), (4, 0), (1, 1))
    assert row_groups((5, 2)) == ((5, 0), (2, 1))
    # The packed decoder's last block: the patch rows of each pass.
    assert row_groups(lengths, groups, ((0, 4, 0, 7), (7, 4, 7, 5))) == ((4, 0), (4, 0))
    # A query range crossing a segment boundary splits into runs.
    assert row_groups(lengths, groups, ((3, 3, 0, 12),)) == ((1, 0), (2, 1))
