"""Generation that stops by itself: the EOS id of ``GeneratorConfig(eos=True)``.

A tiny generator (16-id vocabulary + EOS) with every parameter random
(``benchmarks.models.random_params``); the forced cases steer the EOS logit through a large
first coordinate of the position embedding, which survives the final RMSNorm as about
sqrt(dim) * sign and meets a large head weight.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flextok_jax import generator
from flextok_jax.benchmarks.models import random_params
from flextok_jax.generator import sampler

VOCAB = 16
N = 16  # the tiny preset's max_tokens
LOGIT_TOL = 1e-5
LABELS = jnp.array([0, 3, 9, 10, 1, 2, 7, 5])  # 10 = the null class
FILTERED = dict(cfg_scale=2.0, temperature=0.9, top_k=8, top_p=0.95)
BIG = 1e3  # |pos_embed[:, 0]| and |head[0, EOS]|: the EOS logit is then about +-8e3


@pytest.fixture(scope="module")
def eos_gen():
    gen = generator.Generator(generator.preset("tiny", vocab_size=VOCAB, eos=True))
    return gen, random_params(gen, seed=0)


def steered(params, eos_positions, sign_elsewhere=-1.0):
    """Params whose EOS logit is about +8e3 at the output positions ``eos_positions`` and
    ``sign_elsewhere`` * 8e3 at every other position."""
    pos = np.full((N,), sign_elsewhere * BIG, np.float32)
    pos[list(eos_positions)] = BIG
    out = jax.tree_util.tree_map(lambda x: x, params)
    out["pos_embed"] = params["pos_embed"].at[:, 0].set(jnp.asarray(pos))
    out["head"] = {"kernel": params["head"]["kernel"].at[0, VOCAB].set(BIG)}
    return out


def test_parameter_trees(eos_gen):
    plain = generator.Generator(generator.preset("tiny", vocab_size=VOCAB))
    shapes = lambda g: {jax.tree_util.keystr(p): x.shape for p, x in
                        jax.tree_util.tree_flatten_with_path(jax.eval_shape(g.init, jax.random.key(0)))[0]}
    a, b = shapes(plain), shapes(eos_gen[0])
    assert a.keys() == b.keys()
    diff = {k for k in a if a[k] != b[k]}
    assert diff == {"['head']['kernel']", "['token_embed']['embedding']"}
    assert a["['head']['kernel']"] == (64, VOCAB) and b["['head']['kernel']"] == (64, VOCAB + 1)
    assert eos_gen[0].config.eos_id == VOCAB
    with pytest.raises(ValueError, match="until EOS, but this generator has none"):
        plain.generate(plain.init(jax.random.key(0)), LABELS[:2], None)


def test_mixed_stopping_batch_equals_images_one_by_one(eos_gen):
    gen, params = eos_gen
    rng = jax.random.key(5)
    tokens, lengths = gen.generate(params, LABELS, None, rng=rng, **FILTERED)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    # The random EOS logit wins now and then: stopping points differ, some reach n.
    assert len(set(lengths.tolist())) >= 3 and lengths.min() >= 1 and lengths.max() <= N, lengths
    assert tokens.shape == (8, lengths.max())
    keys = sampler.per_image_keys(rng, 8)
    for b, length in enumerate(lengths):
        assert np.all(tokens[b, :length] >= 0) and np.all(tokens[b, :length] < VOCAB)
        assert np.all(tokens[b, length:] == generator.PAD_TOKEN)
        alone, alone_len = gen.generate(params, LABELS[b : b + 1], None, rng=keys[b : b + 1], **FILTERED)
        assert int(alone_len[0]) == length and alone.shape == (1, length)
        np.testing.assert_array_equal(np.asarray(alone)[0], tokens[b, :length])


def test_cache_segments_until_eos_equal_one_cache(eos_gen):
    """Mixed stopping points (some images reach n): segments of 4 positions draw the tokens,
    lengths and logits of one full-length cache, so every segment's loop stops at its end."""
    gen, params = eos_gen
    rng = jax.random.key(5)
    whole = gen.generate(params, LABELS, None, rng=rng, return_logits=True, cache_chunk=0, **FILTERED)
    split = gen.generate(params, LABELS, None, rng=rng, return_logits=True, cache_chunk=4, **FILTERED)
    assert int(np.max(whole[1])) > 8  # the batch runs into the third segment
    np.testing.assert_array_equal(split[0], whole[0])
    np.testing.assert_array_equal(split[1], whole[1])
    np.testing.assert_allclose(split[2], whole[2], rtol=0, atol=LOGIT_TOL * FILTERED["cfg_scale"])


def test_greedy_until_eos_follows_the_teacher_forced_logits(eos_gen):
    gen, params = eos_gen
    tokens, lengths = gen.generate(params, LABELS, None, temperature=0.0)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    assert lengths.min() < N  # some image stops early, so the EOS branch is exercised
    full = np.zeros((8, N), np.int32)
    for b, length in enumerate(lengths):
        full[b, :length] = tokens[b, :length]
        if length < N:
            full[b, length] = VOCAB
    logits = np.array(gen.logits(params, LABELS, jnp.asarray(full)))
    logits[:, 0, VOCAB] = -np.inf  # the first token is never EOS
    for b, length in enumerate(lengths):
        stop = min(length + 1, N)
        np.testing.assert_array_equal(np.argmax(logits[b, :stop], -1), full[b, :stop])


def test_model_that_never_emits_eos_stops_at_n(eos_gen):
    gen, params = eos_gen
    never = steered(params, [], sign_elsewhere=-1.0)
    tokens, lengths = gen.generate(never, LABELS, None, rng=jax.random.key(1), **FILTERED)
    assert np.all(np.asarray(lengths) == N) and tokens.shape == (8, N)
    assert np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < VOCAB))


# chunk 4: the loop runs in cache segments 4, 8, 12, 16; an EOS at 5 ends it in the second,
# and the later segments run no step.
@pytest.mark.parametrize("position,chunk", [(1, sampler.CACHE_CHUNK), (5, sampler.CACHE_CHUNK), (5, 4)])
def test_forced_eos_stops_at_the_expected_position(eos_gen, position, chunk):
    gen, params = eos_gen
    forced = steered(params, [position])
    tokens, lengths, logits = gen.generate(forced, LABELS, None, rng=jax.random.key(2), return_logits=True,
                                           cache_chunk=chunk)
    assert np.all(np.asarray(lengths) == position) and tokens.shape == (8, position)
    logits = np.asarray(logits)
    assert np.all(logits[:, position, VOCAB] > 1e3)  # EOS drawn there, at a logit far above the rest
    # The loop ended right after that position: the later logit rows were never written.
    assert np.all(logits[:, position + 1 :] == 0) and np.all(np.any(logits[:, : position + 1] != 0, axis=-1))
    # With a fixed k the same model never draws EOS.
    fixed = np.asarray(gen.generate(forced, LABELS, N, rng=jax.random.key(2)))
    assert fixed.shape == (8, N) and fixed.max() < VOCAB


def test_eos_at_position_0_is_never_drawn(eos_gen):
    gen, params = eos_gen
    tokens, lengths = gen.generate(steered(params, range(N)), LABELS, None, rng=jax.random.key(3))
    # EOS wins everywhere but is masked at 0; each image is then one token long.
    assert np.all(np.asarray(lengths) == 1) and tokens.shape == (8, 1)
    assert np.asarray(tokens).max() < VOCAB


def test_loss_with_lengths_is_masked_cross_entropy_up_to_eos(eos_gen):
    gen, params = eos_gen
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (4, N)).astype(np.int32)
    lengths = np.array([1, 5, 15, 16], np.int32)
    labels = jnp.array([0, 1, 2, 3])
    targets, weights = generator.eos_targets(tokens, lengths, VOCAB)
    targets, weights = np.asarray(targets), np.asarray(weights)
    for b, length in enumerate(lengths):
        np.testing.assert_array_equal(targets[b, :length], tokens[b, :length])
        assert np.all(targets[b, length:] == VOCAB)
        assert weights[b].sum() == min(length + 1, N) and np.all(weights[b, : min(length + 1, N)] == 1)
    loss, _ = generator.next_token_loss(gen, params, labels, tokens, jax.random.key(0), class_dropout=0.0,
                                        lengths=lengths)
    logits = np.asarray(gen.logits(params, labels, jnp.asarray(targets)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (ce * weights).sum() / weights.sum(), rtol=1e-5)
    # Tokens after an image's length do not matter.
    scrambled = tokens.copy()
    scrambled[1, 5:] = (scrambled[1, 5:] + 3) % VOCAB
    again, _ = generator.next_token_loss(gen, params, labels, scrambled, jax.random.key(0), class_dropout=0.0,
                                         lengths=lengths)
    np.testing.assert_allclose(float(again), float(loss), rtol=1e-6)


def test_guided_sampling_stops_as_the_conditional_pass_does(eos_gen):
    """With guidance, every step's EOS probability is the conditional pass's and the other ids
    keep their guided ratios (checked against numpy in float64 on the teacher-forced logits)."""
    gen, params = eos_gen
    labels, scale = LABELS[:4], 3.0
    tokens, lengths, record = gen.generate(params, labels, None, cfg_scale=scale, rng=jax.random.key(2),
                                           return_logits=True)
    tokens, lengths, record = np.asarray(tokens), np.asarray(lengths), np.asarray(record, np.float64)
    assert lengths.max() >= 3, lengths  # some steps after the first are checked
    feed = np.where(tokens == generator.PAD_TOKEN, 0, tokens)
    cond = np.asarray(gen.logits(params, labels, jnp.asarray(feed)), np.float64)
    null = np.asarray(gen.logits(params, jnp.full_like(labels, 10), jnp.asarray(feed)), np.float64)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    for b, length in enumerate(lengths):
        for i in range(1, length):  # position 0 never stops
            p = softmax(record[b, i])
            p_cond = softmax(cond[b, i])
            np.testing.assert_allclose(p[VOCAB], p_cond[VOCAB], rtol=1e-4, atol=1e-7)
            guided = null[b, i, :VOCAB] + scale * (cond[b, i, :VOCAB] - null[b, i, :VOCAB])
            np.testing.assert_allclose(p[:VOCAB] / p[:VOCAB].sum(), softmax(guided), rtol=1e-4, atol=1e-7)
    # Plain u + s (c - u) on EOS too would give another stop probability.
    i = 1
    plain = softmax(null[0, i] + scale * (cond[0, i] - null[0, i]))[VOCAB]
    assert abs(plain - softmax(cond[0, i])[VOCAB]) > 1e-3
