"""The text-conditional generator (``condition='text'``): cached sampling against the
teacher-forced logits with prompts of different lengths in one batch, padding that cannot
leak, the null prefix as guidance's unconditional pass, per-image k, the loss's dropout and
the parameter tree.

A tiny model with every parameter random (``benchmarks.models.random_params``; the trained
init's zero head would make all logits 0), 16 ids, 8 tokens, 6 text slots of width 24.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flextok_jax import generator
from flextok_jax.benchmarks.models import random_params
from flextok_jax.generator import TextCondition, sampler

VOCAB, K, SLOTS, TEXT_DIM = 16, 8, 6, 24
LOGIT_TOL = 1e-5
LENGTHS = np.array([2, 6, 4, 1])  # real text tokens per prompt: one batch, four lengths


@pytest.fixture(scope="module")
def tiny():
    cfg = generator.preset("tiny", vocab_size=VOCAB, max_tokens=K, condition="text", text_dim=TEXT_DIM,
                           max_text_tokens=SLOTS)
    gen = generator.Generator(cfg)
    return gen, random_params(gen, seed=0)


def prompts(lengths=LENGTHS, width: int = SLOTS, seed: int = 0, pad_value: float | None = None) -> TextCondition:
    """Random features, right-padded to ``width`` slots; pad rows hold ``pad_value`` (default:
    random numbers, like an encoder's outputs at padding)."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    # Drawn at the widest width used, then cut: the real rows do not depend on ``width``.
    tokens = rng.normal(size=(b, 16, TEXT_DIM)).astype(np.float32)[:, :width]
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    if pad_value is not None:
        tokens = np.where(mask[..., None] > 0, tokens, np.float32(pad_value))
    pooled = rng.normal(size=(b, TEXT_DIM)).astype(np.float32)
    return TextCondition(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), pooled=jnp.asarray(pooled),
                         null=jnp.zeros((b,), bool))


# chunk 3: cache segments of 3 positions after the text slots (the grown key mask stays True).
@pytest.mark.parametrize("chunk", [sampler.CACHE_CHUNK, 3])
def test_cached_sampling_equals_teacher_forced_and_greedy_is_argmax(tiny, chunk):
    gen, params = tiny
    cond = prompts()
    tokens, used = gen.generate(params, cond, K, rng=jax.random.key(1), return_logits=True, cache_chunk=chunk)
    assert tokens.shape == (4, K)
    np.testing.assert_allclose(used, gen.logits(params, cond, tokens), rtol=0, atol=LOGIT_TOL)

    greedy, used = gen.generate(params, cond, K, temperature=0.0, return_logits=True, cache_chunk=chunk)
    teacher_forced = gen.logits(params, cond, greedy)
    np.testing.assert_allclose(used, teacher_forced, rtol=0, atol=LOGIT_TOL)
    np.testing.assert_array_equal(greedy, jnp.argmax(teacher_forced, -1))
    np.testing.assert_array_equal(greedy, generator.generate(gen, params, cond, K, temperature=0.0, cached=False))
    # The rows are really conditioned: different prompts, different token-0 distributions.
    assert float(jnp.abs(teacher_forced[0, 0] - teacher_forced[1, 0]).max()) > 1e-2


def test_teacher_forced_logits_are_causal(tiny):
    gen, params = tiny
    cond, tokens = prompts(), jax.random.randint(jax.random.key(4), (4, K), 0, VOCAB)
    base = gen.logits(params, cond, tokens)
    changed = gen.logits(params, cond, tokens.at[:, 5].set((tokens[:, 5] + 1) % VOCAB))
    np.testing.assert_array_equal(base[:, :6], changed[:, :6])  # position t sees tokens < t only
    assert float(jnp.abs(base[:, 6:] - changed[:, 6:]).max()) > 1e-3


def test_padding_never_reaches_the_logits(tiny):
    gen, params = tiny
    tokens = jax.random.randint(jax.random.key(5), (4, K), 0, VOCAB)
    lengths = np.array([2, 4, 1, 3])
    base = gen.logits(params, prompts(lengths, width=4), tokens)
    # Extra pad positions (beyond the model's 6 slots too) and NaN pad contents: bitwise the same.
    for width, pad in ((6, None), (9, None), (9, float("nan")), (6, 1e6)):
        got = gen.logits(params, prompts(lengths, width=width, pad_value=pad), tokens)
        np.testing.assert_array_equal(got, base, err_msg=f"width {width} pad {pad}")
    # What a pad slot could leak is its position row (its input is zeroed): change the rows of
    # slots 4 and 5, padding for every prompt here. A model attending to pads would move.
    moved = jax.tree.map(jnp.asarray, params)
    moved["text_pos_embed"] = moved["text_pos_embed"].at[4:].add(5.0)
    np.testing.assert_allclose(gen.logits(moved, prompts(lengths, width=4), tokens), base, rtol=0, atol=1e-6)
    cached = gen.generate(params, prompts(lengths), K, temperature=0.0, return_logits=True)
    cached_moved = gen.generate(moved, prompts(lengths), K, temperature=0.0, return_logits=True)
    np.testing.assert_array_equal(cached[0], cached_moved[0])
    np.testing.assert_allclose(cached_moved[1], cached[1], rtol=0, atol=1e-6)
    # ... and the same change at slot 0 (a real token of every prompt) does move them.
    real = jax.tree.map(jnp.asarray, params)
    real["text_pos_embed"] = real["text_pos_embed"].at[0].add(5.0)
    assert float(jnp.abs(gen.logits(real, prompts(lengths, width=4), tokens) - base).max()) > 1e-3


def test_guidance_uses_the_null_prefix(tiny):
    gen, params = tiny
    cond, s = prompts(), 3.0
    tokens, used = gen.generate(params, cond, K, cfg_scale=s, rng=jax.random.key(2), return_logits=True)
    c = gen.logits(params, cond, tokens)
    u = gen.logits(params, TextCondition.null_prompts(4, gen.config), tokens)
    # A null row ignores its features: the flagged rows equal the empty null prompts.
    np.testing.assert_allclose(gen.logits(params, cond.with_null(jnp.ones(4, bool)), tokens), u, rtol=0, atol=1e-6)
    assert float(jnp.abs(c - u).max()) > 1e-2  # the null prefix is a different condition
    np.testing.assert_allclose(used, u + s * (c - u), rtol=0, atol=LOGIT_TOL * s)
    # cfg_scale 0 samples from the null prefix alone.
    tokens0, used0 = gen.generate(params, cond, K, cfg_scale=0.0, rng=jax.random.key(2), return_logits=True)
    np.testing.assert_allclose(used0, gen.logits(params, TextCondition.null_prompts(4, gen.config), tokens0),
                               rtol=0, atol=LOGIT_TOL)


def test_per_image_k_batch_equals_images_one_by_one(tiny):
    gen, params = tiny
    cond, ks, rng = prompts(), np.array([3, 8, 5, 8], np.int32), jax.random.key(3)
    settings = dict(cfg_scale=2.0, temperature=0.9, top_k=8, top_p=0.95)
    batch = np.asarray(gen.generate(params, cond, ks, rng=rng, **settings))
    keys = sampler.per_image_keys(rng, 4)
    for b, kb in enumerate(ks):
        # Each prompt alone, padded to its own length only.
        alone_cond = prompts(LENGTHS, seed=0).rows(slice(b, b + 1))
        alone_cond = alone_cond.replace(tokens=alone_cond.tokens[:, : LENGTHS[b]], mask=alone_cond.mask[:, : LENGTHS[b]])
        alone = np.asarray(gen.generate(params, alone_cond, int(kb), rng=keys[b : b + 1], **settings))
        np.testing.assert_array_equal(batch[b, :kb], alone[0])
        assert np.all(batch[b, kb:] == generator.PAD_TOKEN)


def test_loss_dropout_swaps_in_the_null_prefix(tiny):
    gen, params = tiny
    cond, tokens = prompts(), jax.random.randint(jax.random.key(6), (4, K), 0, VOCAB)
    dropped, m1 = generator.next_token_loss(gen, params, cond, tokens, jax.random.key(0), class_dropout=1.0)
    null, m0 = generator.next_token_loss(gen, params, TextCondition.null_prompts(4, gen.config), tokens,
                                         jax.random.key(0), class_dropout=0.0)
    kept, _ = generator.next_token_loss(gen, params, cond, tokens, jax.random.key(0), class_dropout=0.0)
    assert float(m1["null_label_fraction"]) == 1.0 and float(m0["null_label_fraction"]) == 1.0
    np.testing.assert_allclose(dropped, null, rtol=1e-6)
    assert abs(float(kept) - float(null)) > 1e-4
    # A train step differentiates through the projections and the null row.
    grads = jax.grad(lambda p: generator.next_token_loss(gen, p, cond, tokens, jax.random.key(1), 0.5)[0])(params)
    for name in ("text_proj", "pooled_proj", "text_pos_embed"):
        assert float(jnp.abs(jax.tree.leaves(grads[name])[0]).max()) > 0, name


def test_parameter_tree_logical_names_and_input_errors(tiny):
    gen, _ = tiny
    params = gen.init(jax.random.key(0))
    flat = traverse_util.flatten_dict(params, sep="/")
    specs = {k: tuple(v) for k, v in traverse_util.flatten_dict(
        gen.logical_specs(), sep="/", is_leaf=lambda _, x: not isinstance(x, dict)).items()}
    assert flat.keys() == specs.keys()
    for key, value in flat.items():
        assert len(specs[key]) == value.ndim and all(specs[key]), (key, specs[key])
    assert "class_embed/embedding" not in flat
    assert specs["text_proj/kernel"] == specs["pooled_proj/kernel"] == ("text_embed", "embed")
    assert flat["text_proj/kernel"].shape == (TEXT_DIM, gen.config.dim)
    assert specs["text_pos_embed"] == ("text_positions", "embed") and specs["null_embed"] == ("embed",)
    # The class model's tree has no text parameters.
    class_flat = traverse_util.flatten_dict(generator.Generator(generator.preset("tiny", vocab_size=VOCAB)).init(
        jax.random.key(0)), sep="/")
    assert not [k for k in class_flat if "text" in k or "null_embed" in k or "pooled" in k]
    assert generator.GeneratorConfig.from_dict(gen.config.to_dict()) == gen.config

    tokens = jnp.zeros((4, K), jnp.int32)
    with pytest.raises(ValueError, match="max_text_tokens=6"):
        gen.logits(params, prompts(np.array([7, 1, 1, 1]), width=9), tokens)
    with pytest.raises(ValueError, match="text condition shapes"):
        gen.logits(params, prompts().replace(pooled=jnp.zeros((4, 5))), tokens)
    with pytest.raises(TypeError, match="text-conditional"):
        gen.logits(params, jnp.zeros((4,), jnp.int32), tokens)
    with pytest.raises(ValueError, match="num_classes must be 0"):
        generator.GeneratorConfig(vocab_size=16, max_tokens=8, num_classes=10, depth=1, dim=32, num_heads=1,
                                  condition="text")
    with pytest.raises(ValueError, match="condition must be one of"):
        generator.preset("tiny", condition="image")
