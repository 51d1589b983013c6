"""FID statistics, Fréchet distance, Inception Score, precision/recall, ADM reference batches."""
import numpy as np
import pytest
import scipy.linalg

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from flextok_jax import parallel
from flextok_jax.evaluate.fid import FeatureStats, StatsAccumulator, feature_statistics, frechet_distance, stats_distance
from flextok_jax.evaluate.inception_score import inception_score
from flextok_jax.evaluate.precision_recall import manifold_radii, precision_recall
from flextok_jax.evaluate.reference_batch import (
    iter_reference_images,
    load_reference_batch,
    load_reference_stats,
    save_reference_batch,
)


@pytest.fixture(scope="module")
def fid_ref(parity_dir):
    with np.load(parity_dir / "inception_fid_ref.npz") as f:
        return {k: f[k] for k in f.files if k.startswith("fid_")}


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _random_cov(rng, d, n):
    """Sample covariance of n correlated, offset, non-Gaussian (abs) features: a realistic spectrum."""
    x = np.abs(rng.standard_normal((n, d)) @ (np.eye(d) + rng.standard_normal((d, d)) / np.sqrt(d)) + 0.5)
    return x.mean(0), np.cov(x, rowvar=False)


# --- Fréchet distance -------------------------------------------------------------------------


def test_frechet_distance_matches_pytorch_fid_fixture(fid_ref):
    stats_a = feature_statistics(fid_ref["fid_A"])
    np.testing.assert_allclose(stats_a.mean, fid_ref["fid_mu1"], rtol=0, atol=1e-14)
    np.testing.assert_allclose(stats_a.cov, fid_ref["fid_sigma1"], rtol=0, atol=1e-13)
    fid = frechet_distance(fid_ref["fid_mu1"], fid_ref["fid_sigma1"], fid_ref["fid_mu2"], fid_ref["fid_sigma2"])
    assert abs(fid - float(fid_ref["fid_value"])) <= 1e-8 * float(fid_ref["fid_value"])
    same = frechet_distance(fid_ref["fid_mu1"], fid_ref["fid_sigma1"], fid_ref["fid_mu1"], fid_ref["fid_sigma1"])
    assert abs(same) <= 1e-10 * np.trace(fid_ref["fid_sigma1"])


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    d = 256  # scipy's sqrtm costs minutes at 2048 on 2 busy cores; 2048 is checked analytically below
    mu1, s1 = _random_cov(rng, d, 2 * d)
    mu2, s2 = _random_cov(rng, d, 2 * d)
    s2 = 1.1 * s2
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fid(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-6 * abs(ref)


def test_frechet_distance_2048_against_closed_form():
    """Covariances sharing eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i) exactly."""
    rng = np.random.default_rng(1)
    d = 2048
    a = np.exp(rng.uniform(-9, 1, d))  # condition number ~2e4, as Inception features have
    b = a * np.exp(rng.normal(0, 0.3, d))

    def rotate(eigenvalues):
        # Q diag Q^T with Q a product of two Householder reflections: a dense orthogonal basis
        # built in O(d^2), so that the test's cost is the distance's own.
        m = np.diag(eigenvalues)
        for v in (rng_basis[0], rng_basis[1]):
            m = m - 2 * np.outer(v, v @ m)
            m = m - 2 * np.outer(m @ v, v)
        return m

    rng_basis = [v / np.linalg.norm(v) for v in rng.standard_normal((2, d))]
    s1, s2 = rotate(a), rotate(b)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    want = np.sum((mu1 - mu2) ** 2) + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    got = frechet_distance(mu1, s1, mu2, s2)
    assert abs(got - want) <= 1e-6 * want


def test_frechet_distance_of_rank_deficient_stats():
    """Fewer samples than dimensions (rank 9 of 256): the zero eigenvalues' round-off must not
    leak in as ~sqrt(eps) each (without the rank cutoff this FD(S, S) is -7e-6)."""
    stats = feature_statistics(np.abs(np.random.default_rng(6).standard_normal((10, 256)) + 1))
    assert abs(stats_distance(stats, stats)) <= 1e-12 * np.trace(stats.cov)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"sigma2 has shape \(3, 4\), expected \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="sigma1 has non-finite"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


# --- accumulation -----------------------------------------------------------------------------


def test_accumulator_on_8_device_mesh_matches_float64():
    mesh = parallel.make_mesh((4, 2, 1))
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    rng = np.random.default_rng(2)
    d, batch = 96, 64
    feats = (np.abs(rng.standard_normal((5 * batch, d)) + 3.0) * rng.uniform(0.1, 2.0, d)).astype(np.float32)
    valid = np.ones(5 * batch, bool)
    valid[-13:] = False  # a padded last batch
    acc = StatsAccumulator(d, mesh, flush_every=2)
    assert acc.shards == 8
    for i in range(0, feats.shape[0], batch):
        acc.update(jax.device_put(feats[i : i + batch], rows), jax.device_put(valid[i : i + batch], rows))
    stats = acc.result()
    want = feature_statistics(feats[valid].astype(np.float64))
    assert stats.count == int(valid.sum())
    np.testing.assert_allclose(stats.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(stats.cov, want.cov, rtol=0, atol=2e-6 * np.abs(want.cov).max())
    # Each device sums only its own rows: no cross-device reduction in the update.
    args = (acc._count, acc._sum, acc._outer, acc._ref, jax.device_put(feats[:batch], rows), jax.device_put(valid[:batch], rows))
    hlo = acc._update.lower(*args).compile().as_text()
    assert "all-reduce" not in hlo and "all-gather" not in hlo


def test_accumulator_rejects_bad_batches():
    acc = StatsAccumulator(4, parallel.make_mesh((8, 1, 1)))
    with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
        acc.update(jnp.zeros((12, 4)))
    with pytest.raises(ValueError, match=r"features must be \[B, 4\]"):
        acc.update(jnp.zeros((8, 5)))


# --- Inception Score --------------------------------------------------------------------------


def _is_reference(logits, splits):
    """Direct float64 transcription of the definition."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, scores = len(p), []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        py = part.mean(0)
        kl = np.sum(part * (np.log(np.maximum(part, 1e-300)) - np.log(py)), axis=1)
        scores.append(np.exp(kl.mean()))
    return np.mean(scores), np.std(scores)


def test_inception_score_known_values():
    mean, std = inception_score(np.zeros((50, 1008)), splits=10)
    assert abs(mean - 1.0) < 1e-12 and std < 1e-12
    # Confident, distinct classes: each split of 10 samples covers 10 classes -> IS = 10.
    onehot = np.full((100, 1008), -50.0)
    onehot[np.arange(100), np.arange(100)] = 50.0
    mean, std = inception_score(onehot, splits=10)
    assert abs(mean - 10.0) < 1e-9 and std < 1e-9
    assert abs(inception_score(onehot, splits=1)[0] - 100.0) < 1e-8
    # Half the samples on one class, half on another, all confident: IS = 2.
    two = np.full((40, 5), -60.0)
    two[:20, 0] = two[20:, 1] = 60.0
    assert abs(inception_score(two, splits=1)[0] - 2.0) < 1e-9
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 10)), splits=10)


def test_inception_score_matches_direct_formula():
    logits = np.random.default_rng(3).normal(0, 3, (997, 1008))
    np.testing.assert_allclose(inception_score(logits, 10), _is_reference(logits, 10), rtol=1e-10)


# --- precision / recall -----------------------------------------------------------------------


def _pr_reference(real, fake, k):
    def dist(a, b):
        return np.sqrt(np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)  # [N real, M fake]
    return np.mean(np.any(d <= r_real[:, None], axis=0)), np.mean(np.any(d <= r_fake[None, :], axis=1))


def test_precision_recall_constructed():
    # Real: a 10x10 unit grid (3rd-neighbour distance sqrt(2) inside, 2 on edges/corners).
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    # Fake: 30 points near grid nodes (inside), 10 far away in a tight cluster of their own.
    near = grid[:30] + 0.1
    far = np.stack([np.full(10, 100.0), np.linspace(0, 0.9, 10)], -1)
    fake = np.concatenate([near, far])
    precision, recall = precision_recall(grid, fake, k=3)
    assert precision == pytest.approx(30 / 40)
    # Recall: real points inside some fake ball; the near-points' radii (3rd NN among fakes,
    # ~1) cover exactly the grid nodes of rows 0-2 they sit next to.
    assert (precision, recall) == pytest.approx(_pr_reference(grid, fake, 3))
    assert 0 < recall < 1


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((700, 32)).astype(np.float32)
    fake = (1.3 * rng.standard_normal((500, 32)) + 0.4).astype(np.float32)
    got = precision_recall(real, fake, k=3, block=128)  # several blocks, a padded last one
    assert got == pytest.approx(_pr_reference(real.astype(np.float64), fake.astype(np.float64), 3), abs=1e-12)
    radii = manifold_radii(real, k=3, block=100)
    d = np.sqrt(((real[:, None].astype(np.float64) - real[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.sqrt(radii), np.sort(d, 1)[:, 3], rtol=1e-4)


# --- ADM reference batches --------------------------------------------------------------------


def test_reference_batch_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    stats = feature_statistics(rng.standard_normal((20, 6)))
    path = tmp_path / "ref.npz"
    save_reference_batch(path, images, stats)
    loaded = load_reference_batch(path, ("arr_0", "mu", "sigma"))
    np.testing.assert_array_equal(loaded["arr_0"], images)
    np.testing.assert_array_equal(loaded["mu"], stats.mean)
    np.testing.assert_array_equal(loaded["sigma"], stats.cov)
    back = load_reference_stats(path)
    assert stats_distance(back, stats) == pytest.approx(0.0, abs=1e-12)
    batches = list(iter_reference_images(path, 3))
    assert [b.shape[0] for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    with pytest.raises(KeyError, match=r"no array 'mu_s' \(present: \['arr_0', 'mu', 'sigma'\]\)"):
        load_reference_stats(path, spatial=True)


def test_reference_batch_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"arr_0 must be uint8 \[N, H, W, 3\], got float32 \(2, 4, 4, 3\)"):
        load_reference_batch(path, ("arr_0",))
    np.savez(path, mu=np.zeros(4), sigma=np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"sigma has shape \(4, 5\), expected \(4, 4\)"):
        load_reference_stats(path)
    np.savez(path, mu=np.array([{"x": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError, match="allow_pickle"):  # object arrays are never unpickled
        load_reference_stats(path)
    with pytest.raises(ValueError, match="needs images and/or stats"):
        save_reference_batch(path)
    with pytest.raises(ValueError, match="mu must be"):
        save_reference_batch(path, stats=FeatureStats(np.zeros((2, 2)), np.eye(2), 2))
