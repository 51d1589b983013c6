"""next_token_loss against an independent float64 numpy cross-entropy; class dropout; bands."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flextok_jax import generator
from flextok_jax.benchmarks.models import random_params

VOCAB = 16
TOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    gen = generator.Generator(generator.preset("tiny", vocab_size=VOCAB))
    return gen, random_params(gen, seed=0)


def numpy_ce(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """float64 -log softmax(logits)[token], [B, T]."""
    z = logits.astype(np.float64)
    m = z.max(-1, keepdims=True)
    log_norm = m[..., 0] + np.log(np.exp(z - m).sum(-1))
    return log_norm - np.take_along_axis(z, tokens[..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def batch():
    labels = jnp.array([0, 3, 7, 9, 10, 2])
    tokens = jax.random.randint(jax.random.key(5), (6, 16), 0, VOCAB, jnp.int32)
    return labels, tokens


def test_loss_accuracy_and_bands_equal_numpy(tiny, batch):
    gen, params = tiny
    labels, tokens = batch
    loss, metrics = generator.next_token_loss(gen, params, labels, tokens, jax.random.key(0), class_dropout=0.0)
    logits = np.asarray(gen.logits(params, labels, tokens))
    ce, tok = numpy_ce(logits, np.asarray(tokens)), np.asarray(tokens)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, ce.mean(), rtol=0, atol=TOL)
    np.testing.assert_allclose(metrics["accuracy"], (logits.argmax(-1) == tok).mean(), rtol=0, atol=1e-7)
    assert metrics["null_label_fraction"] == pytest.approx(1 / 6)
    # T = 16: bands 1, 2-4, 5-16; no band starts beyond T.
    bands = {"loss/pos_001": ce[:, :1], "loss/pos_002-004": ce[:, 1:4], "loss/pos_005-016": ce[:, 4:16]}
    assert {k for k in metrics if k.startswith("loss/")} == set(bands)
    for name, part in bands.items():
        np.testing.assert_allclose(metrics[name], part.mean(), rtol=0, atol=TOL, err_msg=name)


def test_band_names_up_to_256():
    assert generator.position_bands(256) == [(1, 1), (2, 4), (5, 16), (17, 64), (65, 256)]
    assert generator.position_bands(20) == [(1, 1), (2, 4), (5, 16), (17, 64)]


def test_weights_mask_positions(tiny, batch):
    gen, params = tiny
    labels, tokens = batch
    weights = np.ones(tokens.shape, np.float32)
    weights[:, 10:] = 0  # e.g. images trained on their first 10 tokens only
    weights[0] = 0
    loss, metrics = generator.next_token_loss(gen, params, labels, tokens, jax.random.key(0), 0.0, jnp.asarray(weights))
    ce = numpy_ce(np.asarray(gen.logits(params, labels, tokens)), np.asarray(tokens))
    np.testing.assert_allclose(loss, (ce * weights).sum() / weights.sum(), rtol=0, atol=TOL)
    np.testing.assert_allclose(metrics["loss/pos_005-016"], ce[1:, 4:10].mean(), rtol=0, atol=TOL)


def test_class_dropout_rate_and_use(tiny, batch):
    gen, params = tiny
    n = 200_000
    dropped = generator.drop_labels(jnp.zeros((n,), jnp.int32), jax.random.key(7), 0.1, gen.config.null_label)
    rate = float(jnp.mean(dropped == gen.config.null_label))
    assert abs(rate - 0.1) < 5 * np.sqrt(0.1 * 0.9 / n), rate  # 5 sigma
    assert set(np.unique(np.asarray(dropped)).tolist()) == {0, gen.config.null_label}

    labels, tokens = batch
    # The loss sees exactly the dropped labels: with rate 1 everything is the null class.
    loss, metrics = generator.next_token_loss(gen, params, labels, tokens, jax.random.key(0), class_dropout=1.0)
    null = jnp.full_like(labels, gen.config.null_label)
    ce = numpy_ce(np.asarray(gen.logits(params, null, tokens)), np.asarray(tokens))
    np.testing.assert_allclose(loss, ce.mean(), rtol=0, atol=TOL)
    assert metrics["null_label_fraction"] == 1.0


def test_jitted_loss_and_grads_at_the_training_init(batch):
    gen = generator.Generator(generator.preset("tiny", vocab_size=VOCAB))
    params = gen.init(jax.random.key(0))
    labels, tokens = batch

    @jax.jit
    def loss_and_grads(p, rng):
        return jax.value_and_grad(lambda q: generator.next_token_loss(gen, q, labels, tokens, rng), has_aux=True)(p)

    (loss, metrics), grads = loss_and_grads(params, jax.random.key(1))
    # The zero head predicts uniformly: the loss is log V exactly, and only the head gets a
    # gradient (everything behind it is multiplied by the zero kernel).
    np.testing.assert_allclose(loss, np.log(VOCAB), rtol=1e-6)
    assert np.abs(grads["head"]["kernel"]).max() > 0
    assert np.abs(grads["blocks_0"]["mlp"]["fc1"]["kernel"]).max() == 0
    assert all(np.isfinite(float(v)) for v in metrics.values())
