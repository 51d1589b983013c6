"""generate_images: generator tokens decoded by a FlexTok, a different k per image."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, generator
from flextok_jax.benchmarks.models import random_params


@pytest.fixture(scope="module")
def models():
    # A pixel-space tokenizer (no VAE) keeps the decode cheap; random weights everywhere, so
    # every token matters to the image.
    t = TransformerConfig(dim=64, depth=1, head_dim=32)
    tokenizer = FlexTok(FlexTokConfig(encoder=t, decoder=t, n_registers=16, latent_channels=3, patch_grid=(2, 2)))
    gen = generator.Generator(generator.preset("tiny"))
    return gen, random_params(gen, seed=0), tokenizer, random_params(tokenizer, seed=1)


def test_generate_images_decodes_the_sampled_tokens_with_their_k(models):
    gen, params, tokenizer, tok_params = models
    labels, ks = jnp.array([3, 10]), np.array([2, 16], np.int32)
    rng, decode_rng = jax.random.key(4), jax.random.key(5)
    images = generator.generate_images(gen, params, tokenizer, tok_params, labels, ks, cfg_scale=2.0, rng=rng,
                                       num_steps=2, guidance_scale=1.5, decode_rng=decode_rng)
    assert images.shape == (2, *tokenizer.config.image_size, 3) and images.dtype == jnp.float32

    tokens = np.array(gen.generate(params, labels, ks, cfg_scale=2.0, rng=rng))
    assert np.all(tokens[0, 2:] == generator.PAD_TOKEN)
    tokens[0, 2:] = 7  # any id: keep_k masks them out
    want = tokenizer.detokenize(tok_params, tokens, keep_k=ks, num_steps=2, guidance_scale=1.5, rng=decode_rng)
    np.testing.assert_allclose(images, want, rtol=0, atol=1e-6)
    # Image 0 really is decoded from 2 tokens: all 16 would give another image.
    all16 = tokenizer.detokenize(tok_params, tokens, num_steps=2, guidance_scale=1.5, rng=decode_rng)
    assert np.abs(np.asarray(all16[0]) - np.asarray(images[0])).max() > 1e-3


def test_images_by_k_equal_one_generation_per_k(models):
    """One generation of max(ks) tokens, decoded per prefix, equals generating each k on its own
    (with top-k and temperature, so a wrong key per position would show)."""
    gen, params, tokenizer, tok_params = models
    labels, ks = jnp.array([1, 4, 10]), [1, 4, 16]
    kwargs = dict(cfg_scale=2.5, temperature=0.8, top_k=50, rng=jax.random.key(7), num_steps=2,
                  decode_rng=jax.random.key(8))
    by_k = generator.generate_images_by_k(gen, params, tokenizer, tok_params, labels, ks, **kwargs)
    assert by_k.shape == (3, 3, *tokenizer.config.image_size, 3)
    for i, k in enumerate(ks):
        one = generator.generate_images(gen, params, tokenizer, tok_params, labels, k, **kwargs)
        np.testing.assert_allclose(by_k[i], np.asarray(one), rtol=0, atol=1e-6, err_msg=f"k={k}")


def test_generate_images_rejects_a_mismatched_tokenizer(models):
    _, _, tokenizer, tok_params = models
    gen = generator.Generator(generator.preset("tiny", vocab_size=16))
    with pytest.raises(ValueError, match="generator vocab_size 16 != tokenizer vocab_size 64000"):
        generator.generate_images(gen, None, tokenizer, tok_params, jnp.array([1]), 4)


def test_generate_images_until_eos_decodes_each_image_at_its_length(models):
    _, _, tokenizer, tok_params = models
    gen = generator.Generator(generator.preset("tiny", eos=True))
    params = random_params(gen, seed=0)
    # The random EOS column competes with 64,000 others; lift it so images stop early.
    params["head"] = {"kernel": params["head"]["kernel"].at[:, -1].multiply(40.0)}
    labels, rng, decode_rng = jnp.array([3, 10, 1, 5]), jax.random.key(4), jax.random.key(5)
    tokens, lengths = gen.generate(params, labels, None, rng=rng)
    lengths = np.asarray(lengths)
    assert lengths.min() < 16  # at least one image ended by itself
    images = generator.generate_images(gen, params, tokenizer, tok_params, labels, None, rng=rng,
                                       num_steps=2, decode_rng=decode_rng)
    filled = np.where(np.asarray(tokens) == generator.PAD_TOKEN, 0, np.asarray(tokens))
    want = tokenizer.detokenize(tok_params, filled, keep_k=lengths, num_steps=2, rng=decode_rng)
    np.testing.assert_allclose(images, want, rtol=0, atol=1e-6)
    again, stopped = generator.generate_images(gen, params, tokenizer, tok_params, labels, None, rng=rng,
                                               num_steps=2, decode_rng=decode_rng, return_num_tokens=True)
    np.testing.assert_array_equal(stopped, lengths)
    np.testing.assert_array_equal(again, images)
