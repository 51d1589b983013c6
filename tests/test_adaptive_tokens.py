"""The fewest tokens per image (``FlexTok.tokenize_adaptive``) and ragged token files.

A tiny pixel-space tokenizer (16 registers, 16x16 pictures) is trained here for a few hundred
steps on procedural pictures: flat colours and vertical two-colour stripes of random frequency
and phase, so "plain needs fewer tokens than busy" is a measured property of a model that has
learnt something, not of random weights.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, flow
from flextok_jax.model.flextok import mean_squared_distance
from flextok_jax.train.tokenizer_task import sample_keep_k

SIZE = 16
N = 16
TRAIN_STEPS = 600
STEPS = 4  # Euler steps of the trial decodes (the default)
# The plain decode (no bucketing, no collapsed registers) against the bucketed one; the
# collapsed decoder equals the plain one to 1e-5 per velocity (test_fast_inference).
DIST_TOL = 1e-5


def pictures(rng: jax.Array, b: int) -> tuple[jax.Array, jax.Array]:
    """(flat [b, 16, 16, 3], striped [b, 16, 16, 3]) in [-1, 1]."""
    k1, k2, k3, k4 = jax.random.split(rng, 4)
    c1 = jax.random.uniform(k1, (b, 1, 1, 3), minval=-0.8, maxval=0.8)
    c2 = jax.random.uniform(k2, (b, 1, 1, 3), minval=-0.8, maxval=0.8)
    freq = jax.random.randint(k3, (b, 1, 1, 1), 2, 6).astype(jnp.float32)
    phase = jax.random.uniform(k4, (b, 1, 1, 1), maxval=2 * np.pi)
    x = jnp.arange(SIZE, dtype=jnp.float32)[None, None, :, None]
    stripes = jnp.sin(2 * np.pi * freq * x / SIZE + phase) > 0
    return jnp.broadcast_to(c1, (b, SIZE, SIZE, 3)), jnp.broadcast_to(jnp.where(stripes, c1, c2), (b, SIZE, SIZE, 3))


def train(model: FlexTok, steps: int) -> dict:
    """Rectified-flow training with pow2 nested dropout, batches of 16 flat + 16 striped."""
    params = model.init(jax.random.key(0))
    opt = optax.adam(2e-3)

    def loss_fn(p, images, rng):
        r_keep, r_t, r_noise = jax.random.split(rng, 3)
        x0, codes = model.encode(p, images)
        keep = sample_keep_k(r_keep, images.shape[0], N, "pow2")
        t = flow.sample_logit_normal_t(r_t, images.shape[0])
        noise = jax.random.normal(r_noise, x0.shape)
        v = model.velocity(p, flow.add_noise(x0, noise, t), t, codes, keep)
        return jnp.mean(jnp.square(v - (noise - x0)))

    @jax.jit
    def run(p, rng):
        def step(i, carry):
            p, s = carry
            r_pic, r_loss = jax.random.split(jax.random.fold_in(rng, i))
            images = jnp.concatenate(pictures(r_pic, 16))
            grads = jax.grad(loss_fn)(p, images, r_loss)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        return jax.lax.fori_loop(0, steps, step, (p, opt.init(p)))[0]

    return run(params, jax.random.key(1))


@pytest.fixture(scope="module")
def trained():
    t = TransformerConfig(dim=64, depth=2, head_dim=32)
    cfg = FlexTokConfig(encoder=t, decoder=t, n_registers=N, latent_channels=3, patch_size=(4, 4),
                        patch_grid=(4, 4), vae=None)
    model = FlexTok(cfg)
    return model, train(model, TRAIN_STEPS)


@pytest.fixture(scope="module")
def test_pictures():
    flat, striped = pictures(jax.random.key(99), 8)
    return np.asarray(flat), np.asarray(striped)


def independent_distances(model, params, images, ids, ks, seed=0, metric=None) -> np.ndarray:
    """[B, K] distances by the plain decoder (exact_shortcut=False: no bucketing), one k at a time."""
    noise = jax.random.normal(jax.random.key(seed), model.latent_shape, jnp.float32)
    noise = jnp.broadcast_to(noise, (len(images),) + noise.shape)
    out = []
    for k in ks:
        decoded = model.sample_latents(params, ids, keep_k=int(k), num_steps=STEPS, noise=noise, exact_shortcut=False)
        if metric is None:  # pixel-space: the latents are the pixels
            diff = np.asarray(decoded, np.float64) - np.asarray(images, np.float64)
            out.append(np.mean(diff**2, axis=(1, 2, 3)))
        else:
            out.append(np.asarray(metric(jnp.asarray(images), decoded)))
    return np.stack(out, axis=1)


def test_chosen_k_is_the_smallest_that_meets_the_target(trained, test_pictures):
    model, params = trained
    images = np.concatenate(test_pictures)
    ids, ks, dist = model.reconstruction_distances(params, images)
    assert ks.tolist() == [1, 2, 4, 8, 16] and ids.shape == (16, N)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(model.tokenize(params, images)))
    ref = independent_distances(model, params, images, ids, ks)
    np.testing.assert_allclose(np.asarray(dist), ref, rtol=0, atol=DIST_TOL)
    # Targets between the measured distances, none within 1e-4 of one (so the tolerance above
    # cannot flip a decision).
    for target in np.quantile(ref, [0.1, 0.3, 0.5, 0.7]):
        while np.min(np.abs(ref - target)) < 1e-4:
            target += 1e-4
        found = model.tokenize_adaptive(params, images, float(target))
        np.testing.assert_array_equal(np.asarray(found.ids), np.asarray(ids))
        for b, k in enumerate(found.num_tokens):
            j = int(np.searchsorted(ks, k))
            if found.met[b]:
                assert ref[b, j] <= target, (b, k, ref[b], target)
                assert np.all(ref[b, :j] > target), (b, k, ref[b], target)  # in particular k / 2
            else:
                assert k == N and np.all(ref[b] > target)


def test_plain_pictures_get_fewer_tokens_than_busy_ones(trained, test_pictures):
    model, params = trained
    flat, striped = test_pictures
    target = 0.05  # measured at k = 1: flat 0.016-0.056, striped 0.063-0.235 (600 steps)
    k_flat = model.tokenize_adaptive(params, flat, target).num_tokens
    striped_found = model.tokenize_adaptive(params, striped, target)
    k_striped = striped_found.num_tokens
    # Measured: flat k = 1 for 7 of 8 pictures (one needs all 16), striped k = 16 for all 8.
    # The briefly trained model does not yet reconstruct stripes better with more tokens, so
    # the busy pictures end at n because no k meets the target (met False), not at a middle k.
    assert np.median(k_flat) == 1, k_flat
    assert k_flat.mean() < k_striped.mean(), (k_flat, k_striped)
    assert np.sum(k_flat < k_striped) >= 6, (k_flat, k_striped)


def test_pluggable_metric_and_bad_input(trained, test_pictures):
    model, params = trained
    images = test_pictures[1][:4]

    def max_abs(target, decoded):  # [B, h, w, C] x2 -> [B]
        return jnp.max(jnp.abs(target - decoded), axis=(1, 2, 3))

    ids, ks, dist = model.reconstruction_distances(params, images, metric=max_abs)
    ref = independent_distances(model, params, images, ids, ks, metric=max_abs)
    np.testing.assert_allclose(np.asarray(dist), ref, rtol=0, atol=1e-4)
    assert not np.allclose(dist, model.reconstruction_distances(params, images)[2])  # the metric was used
    with pytest.raises(ValueError, match="one distance per image"):
        model.reconstruction_distances(params, images, metric=lambda t, d: jnp.mean((t - d) ** 2))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="quality target must be a finite distance > 0"):
            model.tokenize_adaptive(params, images, bad)
    with pytest.raises(ValueError, match="strictly increasing"):
        model.reconstruction_distances(params, images, ks=[4, 2])
    np.testing.assert_allclose(mean_squared_distance(jnp.ones((2, 3)), jnp.zeros((2, 3))), [1.0, 1.0])


def test_vae_model_distances_are_between_latents(tiny, parity_io):
    """The official tiny model (with a VAE): distances are measured between VAE latents."""
    model, params = tiny
    images = np.asarray(parity_io["images"]).transpose(0, 2, 3, 1)
    ids, ks, dist = model.reconstruction_distances(params, images, ks=[1, 4, 16])
    latents = model.encode_latents(params, jnp.asarray(images))
    ref = independent_distances(model, params, latents, ids, ks)
    np.testing.assert_allclose(np.asarray(dist), ref, rtol=1e-5, atol=DIST_TOL)
    found = model.tokenize_adaptive(params, images, float(np.median(ref)) + 1e-4, ks=[1, 4, 16])
    assert set(found.num_tokens.tolist()) <= {1, 4, 16}
