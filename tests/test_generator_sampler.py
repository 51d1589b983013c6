"""The KV-cache sampler against the teacher-forced logits, and its sampling distribution.

A tiny generator with every parameter random (``benchmarks.models.random_params``: the trained
init's zero head would make all logits 0) and a 16-id vocabulary.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from flextok_jax import generator
from flextok_jax.benchmarks.models import random_params
from flextok_jax.generator import sampler

VOCAB = 16
LOGIT_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    gen = generator.Generator(generator.preset("tiny", vocab_size=VOCAB))
    return gen, random_params(gen, seed=0)


# One batch shape (4 images, 16 = max_tokens positions) wherever the test allows, so few
# programs get compiled.
LABELS = jnp.array([0, 3, 9, 10])  # 10 = the null class of the tiny preset


# The default (one segment at 16 positions) and segments of 5 positions (5, 10, 15, 16: a
# one-position last segment).
@pytest.mark.parametrize("chunk", [sampler.CACHE_CHUNK, 5])
def test_cached_logits_equal_teacher_forced_and_greedy_is_argmax(tiny, chunk):
    gen, params = tiny
    k = gen.config.max_tokens
    tokens, used = gen.generate(params, LABELS, k, temperature=1.0, rng=jax.random.key(1), return_logits=True,
                                cache_chunk=chunk)
    assert tokens.shape == (4, k) and tokens.dtype == jnp.int32
    np.testing.assert_allclose(used, gen.logits(params, LABELS, tokens), rtol=0, atol=LOGIT_TOL)

    greedy, used = gen.generate(params, LABELS, k, temperature=0.0, return_logits=True, cache_chunk=chunk)
    # gen.logits is causal (test_generator_model), so its row t is the step-t prefix's logits.
    teacher_forced = gen.logits(params, LABELS, greedy)
    np.testing.assert_allclose(used, teacher_forced, rtol=0, atol=LOGIT_TOL)
    np.testing.assert_array_equal(greedy, jnp.argmax(teacher_forced, -1))
    # The uncached reference path (the benchmark's comparison) agrees.
    np.testing.assert_array_equal(greedy, generator.generate(gen, params, LABELS, k, temperature=0.0, cached=False))


def test_guidance_is_u_plus_s_times_c_minus_u(tiny):
    gen, params = tiny
    labels = LABELS.at[3].set(5)
    ks = np.array([16, 4, 9, 16], np.int32)
    s = 3.0
    null = jnp.full_like(labels, gen.config.null_label)
    for schedule in generator.SCHEDULES:
        tokens, used = gen.generate(params, labels, ks, cfg_scale=s, rng=jax.random.key(2),
                                    guidance_schedule=schedule, return_logits=True)
        filled = jnp.where(tokens == generator.PAD_TOKEN, 0, tokens)
        c, u = gen.logits(params, labels, filled), gen.logits(params, null, filled)
        pos = np.arange(16)[None, :, None]
        scale = s if schedule == "constant" else 1 + (s - 1) * (pos + 1) / ks[:, None, None]
        want = u + scale * (c - u)
        for b, kb in enumerate(ks):  # beyond k[b] the rows are padding, not sampled
            np.testing.assert_allclose(used[b, :kb], want[b, :kb], rtol=0, atol=LOGIT_TOL * s)


PER_IMAGE_K = np.array([5, 9, 9, 5], np.int32)
FILTERED = dict(cfg_scale=2.0, temperature=0.9, top_k=8, top_p=0.95)


def test_cache_segments():
    assert sampler.cache_segments(256, 32) == [32, 64, 96, 128, 160, 192, 224, 256]
    assert sampler.cache_segments(16, 5) == [5, 10, 15, 16]
    assert sampler.cache_segments(16, 0) == sampler.cache_segments(16, 16) == sampler.cache_segments(16, 32) == [16]
    with pytest.raises(ValueError, match="cache_chunk must be an int >= 0"):
        sampler.cache_segments(16, -1)


def test_cache_chunk_changes_no_draw(tiny):
    """Guided, filtered, per-image k: segments of 3 positions draw what one full-length cache
    draws, from the same logits up to float32 rounding (XLA sums attention over another length
    in another order: measured 3e-6 at guidance 2)."""
    gen, params = tiny
    rng = jax.random.key(4)
    whole, whole_logits = gen.generate(params, LABELS, PER_IMAGE_K, rng=rng, return_logits=True, cache_chunk=0,
                                       **FILTERED)
    split, split_logits = gen.generate(params, LABELS, PER_IMAGE_K, rng=rng, return_logits=True, cache_chunk=3,
                                       **FILTERED)
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_allclose(split_logits, whole_logits, rtol=0, atol=LOGIT_TOL * FILTERED["cfg_scale"])
    for bad in (-2, 2.5):
        with pytest.raises(ValueError, match="cache_chunk must be an int >= 0"):
            gen.generate(params, LABELS, 4, cache_chunk=bad)


def test_per_image_k_batch_equals_images_one_by_one(tiny):
    gen, params = tiny
    rng = jax.random.key(3)
    batch = np.asarray(gen.generate(params, LABELS, PER_IMAGE_K, rng=rng, **FILTERED))
    assert batch.shape == (4, 9)
    keys = sampler.per_image_keys(rng, 4)
    for b, kb in enumerate(PER_IMAGE_K):
        alone = np.asarray(gen.generate(params, LABELS[b : b + 1], int(kb), rng=keys[b : b + 1], **FILTERED))
        assert alone.shape == (1, kb)
        np.testing.assert_array_equal(batch[b, :kb], alone[0])
        assert np.all(batch[b, kb:] == generator.PAD_TOKEN)


def test_changing_scalar_settings_does_not_recompile(tiny):
    gen, params = tiny
    first = gen.generate(params, LABELS, PER_IMAGE_K, **FILTERED)
    before = sampler.program_cache_size()
    other = gen.generate(params, LABELS, PER_IMAGE_K, cfg_scale=4.0, temperature=1.3, top_k=5, top_p=0.7)
    assert sampler.program_cache_size() == before
    assert not np.array_equal(first, other)  # the new values did reach the program


# ---------------------------------------------------------------- the sampling distribution
DRAWS = 20_000
P_VALUE = 1e-6  # a correct sampler fails the bound this rarely (the draws are seeded anyway)


def expected_probs(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """float64 numpy reference: softmax(logits / T), then the top_k largest, then the nucleus."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones(z.shape, bool)
    order = np.argsort(-z)
    if top_k:
        keep[order[top_k:]] = False
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1:
        mass_before = np.cumsum(p[order]) - p[order]
        keep[order[mass_before >= top_p]] = False
        p = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum()
    return p


def chi_square_rejects(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson's chi-square test of counts against probs at P_VALUE; an observed id of
    probability 0 always rejects."""
    if np.any(counts[probs == 0] > 0):
        return True
    support = probs > 0
    expected = probs[support] * counts.sum()
    statistic = np.sum((counts[support] - expected) ** 2 / expected)
    return bool(statistic > stats.chi2.isf(P_VALUE, support.sum() - 1))


@pytest.fixture(scope="module")
def first_token_logits(tiny):
    gen, params = tiny
    return np.asarray(gen.logits(params, LABELS, jnp.zeros((4, 16), jnp.int32))[1, 0])  # label 3


def first_token_counts(tiny, **kwargs) -> np.ndarray:
    gen, params = tiny
    tokens = gen.generate(params, jnp.full((DRAWS,), 3), 1, rng=jax.random.key(11), **kwargs)
    return np.bincount(np.asarray(tokens[:, 0]), minlength=VOCAB)


def test_first_token_frequencies_follow_the_temperature(tiny, first_token_logits):
    assert np.ptp(first_token_logits) > 2.0  # spread enough for the temperature to matter
    for t in (0.7, 1.5):
        counts = first_token_counts(tiny, temperature=t)
        assert not chi_square_rejects(counts, expected_probs(first_token_logits, t)), t
        # The bound has the power to see a wrong temperature in these draws.
        assert chi_square_rejects(counts, expected_probs(first_token_logits, 1.0)), t


def test_first_token_frequencies_follow_top_k_and_top_p(tiny, first_token_logits):
    logits = first_token_logits
    counts = first_token_counts(tiny, temperature=0.8, top_k=4)
    assert not chi_square_rejects(counts, expected_probs(logits, 0.8, top_k=4))
    assert chi_square_rejects(counts, expected_probs(logits, 0.8, top_k=5))
    assert chi_square_rejects(counts, expected_probs(logits, 0.8))

    probs = expected_probs(logits, 1.2, top_p=0.6)
    assert 1 < (probs > 0).sum() < VOCAB - 1  # the nucleus cuts somewhere in the middle
    counts = first_token_counts(tiny, temperature=1.2, top_p=0.6)
    assert not chi_square_rejects(counts, probs)
    assert chi_square_rejects(counts, expected_probs(logits, 1.2, top_p=0.8))
    assert chi_square_rejects(counts, expected_probs(logits, 1.2))


@pytest.mark.parametrize("vocab, block", [(1000, 256), (1000, 7), (17, 256)])
def test_two_level_categorical_draws_softmax(vocab, block):
    """The sampler's inverse-CDF draw over blocks (the last one padded) against softmax in float64:
    chi-square over 40,000 draws; ids at -inf never come; a lone finite id always does."""
    z = np.random.default_rng(0).normal(0, 2.0, vocab).astype(np.float32)
    z[::5] = -np.inf
    draws = 40_000
    keys = jax.random.split(jax.random.key(3), draws)
    got = np.asarray(sampler.categorical_two_level(keys, jnp.broadcast_to(jnp.asarray(z), (draws, vocab)), block))
    counts = np.bincount(got, minlength=vocab)
    probs = np.exp(np.float64(z) - np.float64(z).max())
    probs /= probs.sum()
    # Pool the ids expected fewer than 5 times so the chi-square approximation holds.
    rare = probs * draws < 5
    pooled_counts = np.append(counts[~rare], counts[rare].sum())
    pooled_probs = np.append(probs[~rare], probs[rare].sum())
    assert counts[::5].sum() == 0
    assert not chi_square_rejects(pooled_counts, pooled_probs)
    shifted = np.roll(probs, 1)  # the power to see an off-by-one id
    assert chi_square_rejects(counts, shifted / shifted.sum())
    lone = np.full((4, vocab), -np.inf, np.float32)
    lone[:, vocab - 1] = 0.0
    np.testing.assert_array_equal(sampler.categorical_two_level(keys[:4], jnp.asarray(lone), block), vocab - 1)
