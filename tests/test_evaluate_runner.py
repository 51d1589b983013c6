"""The rFID / gFID runner: end to end on tiny random models, resuming, the mesh, bad input."""
import json
import math
import shutil
import warnings

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

import flextok_jax
from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, cli, generator
from flextok_jax.benchmarks.models import random_params
from flextok_jax.data import get_source
from flextok_jax.evaluate import classifier, commands, runner
from flextok_jax.evaluate.feature_store import CorruptShardWarning, FeatureStore
from flextok_jax.evaluate.features import FMNIST_NOTE, fmnist_network, inception_network
from flextok_jax.evaluate.fid import feature_statistics, frechet_distance
from flextok_jax.evaluate.inception import INPUT_SIZE, InceptionV3FID, _abstract_params
from flextok_jax.evaluate.reference_batch import save_reference_batch

KS = [1, 2, 4]
RFID = dict(num_images=160, batch_size=32, shard_size=64, num_steps=2, seed=3, progress=False)  # shards 64, 64, 32


@pytest.fixture(scope="module")
def tokenizer():
    """A 32 px pixel-space FlexTok with 4 registers, random weights (every token matters)."""
    t = TransformerConfig(dim=32, depth=1, head_dim=16)
    model = FlexTok(FlexTokConfig(encoder=t, decoder=t, n_registers=4, latent_channels=3, patch_size=(8, 8),
                                  patch_grid=(4, 4)))
    return model, random_params(model, seed=1)


@pytest.fixture(scope="module")
def clf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    classifier.save_classifier(path, classifier.init_params(0))  # random: features still vary with the image
    return path


@pytest.fixture(scope="module")
def source():
    return get_source(ml_collections.ConfigDict({"source": "fashion_mnist", "split": "test"}))


@pytest.fixture(scope="module")
def rfid_run(tokenizer, clf_file, source, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rfid")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        payload = runner.run_rfid(*tokenizer, fmnist_network(clf_file), source, workdir, ks=KS,
                                  print_table=False, **RFID)
    return workdir, payload, caught


def test_rfid_end_to_end_writes_results_plot_and_table(rfid_run, clf_file, capsys):
    workdir, payload, caught = rfid_run
    assert not [w for w in caught if issubclass(w.category, runner.FewSamplesWarning)]  # 160 >= 128 dims
    results = json.loads((workdir / "results.json").read_text())
    assert [r["k"] for r in results["rows"]] == KS
    assert results["network"]["name"] == "fmnist" and results["network"]["label"] == f"FID-FMNIST, {FMNIST_NOTE}"
    s = results["settings"]
    assert (s["num_images"], s["num_steps"], s["guidance_scale"], s["seed"]) == (160, 2, 1.0, 3)
    assert "FashionMnistSource(split='test'" in s["source"]
    assert results["work"] == {"computed": 12, "loaded": 0}  # (real + 3 k) x 3 shards
    for row in results["rows"]:
        assert row["num_samples"] == 160 and math.isfinite(row["fid"]) and row["fid"] > 0
        assert math.isfinite(row["is_mean"]) and row["is_mean"] >= 1.0
    # The accumulated (sharded, float32 on device) statistics match float64 numpy on the stored features.
    store = FeatureStore(workdir / "features", s)

    def stored(name):
        return np.concatenate([store.load(name, i, 3, 128, True)["features"] for i in range(3)])

    real = feature_statistics(stored("real"))
    for row in results["rows"]:
        fake = feature_statistics(stored(f"k={row['k']}"))
        want = frechet_distance(fake.mean, fake.cov, real.mean, real.cov)
        assert row["fid"] == pytest.approx(want, rel=1e-6)
    image = Image.open(workdir / "fid_vs_k.png")
    assert image.format == "PNG" and image.size == (600, 400)
    table = runner.report.format_table(results)
    assert f"FID-FMNIST, {FMNIST_NOTE}" in table and len(table.splitlines()) == 3 + len(KS)
    assert f"{results['rows'][0]['fid']:10.3f}" in table.splitlines()[3]


def test_rerun_computes_only_missing_shards_and_equals_the_first_run(rfid_run, tokenizer, clf_file, source,
                                                                    tmp_path):
    workdir, first, _ = rfid_run
    again = tmp_path / "again"
    shutil.copytree(workdir, again)
    features = again / "features"
    kept = {p.name: np.load(p)["features"] for p in features.glob("*.npz")}
    (features / "k=2-00001-of-00003.npz").unlink()  # as if killed before this shard was written
    (features / "real-00002-of-00003.npz").unlink()
    (features / "k=4-00000-of-00003.npz").write_bytes(b"PK\x03\x04 not a zip")  # a corrupt file
    with pytest.warns(CorruptShardWarning, match=r"k=4-00000-of-00003\.npz is unreadable"):
        second = runner.run_rfid(*tokenizer, fmnist_network(clf_file), source, again, ks=KS, print_table=False, **RFID)
    assert second["work"] == {"computed": 3, "loaded": 9}
    assert second["rows"] == first["rows"]  # exactly, every number
    for name in ("k=2-00001-of-00003.npz", "real-00002-of-00003.npz", "k=4-00000-of-00003.npz"):
        np.testing.assert_array_equal(np.load(features / name)["features"], kept[name])
    # Other settings in the same workdir are refused instead of mixed in.
    with pytest.raises(ValueError, match="seed: found 3, this run 4"):
        runner.run_rfid(*tokenizer, fmnist_network(clf_file), source, again, ks=KS, print_table=False,
                        **{**RFID, "seed": 4})


def _random_inception_params(seed: int = 0):
    """Random InceptionV3FID weights drawn from the abstract shapes (no init compile): He-normal
    kernels, BatchNorm statistics near (0, 1), as the fixture rule of tests/test_inception.py."""
    shapes = nn.meta.unbox(_abstract_params())
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            value = rng.standard_normal(leaf.shape) * math.sqrt(2.0 / int(np.prod(leaf.shape[:-1])))
        elif name in ("scale", "var"):
            value = 1.0 + 0.1 * np.abs(rng.standard_normal(leaf.shape))
        else:
            value = 0.1 * rng.standard_normal(leaf.shape)
        out.append(value.astype(np.float32))
    return jax.tree_util.tree_unflatten(treedef, out)


def test_inception_features_on_8_devices_equal_one_device():
    network = inception_network(model_params=(InceptionV3FID(), _random_inception_params()))
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    mesh = runner.default_mesh()
    assert mesh.devices.size == 8
    f8, l8 = network.features(images, mesh)
    assert len(f8.sharding.device_set) == 8 and f8.shape == (8, 2048) and l8.shape == (8, 1008)
    f1, l1 = network.features(images)
    np.testing.assert_allclose(np.asarray(f8), np.asarray(f1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(l8), np.asarray(l1), rtol=1e-5, atol=1e-5)
    assert float(np.std(np.asarray(f1), axis=0).max()) > 1e-3  # the features depend on the image
    assert INPUT_SIZE == 299


def test_gfid_command_writes_numbers_per_k_and_scale(tokenizer, clf_file, source, tmp_path, capsys):
    tok, tparams = tokenizer
    flextok_jax.save_params(tmp_path / "tok.safetensors", tparams, tok.config)
    gen = generator.Generator(generator.preset("tiny", max_tokens=4, depth=1))
    generator.save_params(tmp_path / "gen.safetensors", random_params(gen, seed=0), gen.config)
    # An ADM-format reference of the same network: statistics of 200 real test images.
    network = fmnist_network(clf_file)
    real = runner.load_source_images(source, 1000, 1200, 32)
    feats, _ = runner.features_of_images(network, real, batch_size=40)
    save_reference_batch(tmp_path / "ref.npz", stats=feature_statistics(feats))
    workdir = tmp_path / "gfid"
    argv = ["evaluate", "gfid", "--workdir", str(workdir), "--tokenizer", str(tmp_path / "tok.safetensors"),
            "--generator", str(tmp_path / "gen.safetensors"), "--network", "fmnist", "--weights", str(clf_file),
            "--reference", str(tmp_path / "ref.npz"), "--ks", "1", "4", "--cfg_scales", "1", "3",
            "--num_samples", "32", "--batch_size", "16", "--shard_size", "16", "--num_steps", "2", "--no_progress"]
    with pytest.warns(runner.FewSamplesWarning, match="32 samples but 128 feature dimensions"):
        assert cli.main(argv) == 0
    results = json.loads((workdir / "results.json").read_text())
    got = {(r["k"], r["cfg_scale"]): r for r in results["rows"]}
    assert sorted(got) == [(1, 1.0), (1, 3.0), (4, 1.0), (4, 3.0)]
    assert all(math.isfinite(r["fid"]) and r["num_samples"] == 32 and "is_mean" in r for r in got.values())
    assert len({r["fid"] for r in got.values()}) == 4  # k and the scale both change the samples
    assert results["reference"] == {"kind": "statistics", "num_samples": -1}
    assert results["settings"]["num_steps"] == 2 and results["work"] == {"computed": 8, "loaded": 0}
    assert len(list((workdir / "features").glob("k=*_cfg=*-of-00002.npz"))) == 8
    assert (workdir / "fid_vs_k.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert f"FID-FMNIST, {FMNIST_NOTE}" in out and "cfg" in out


def test_few_samples_warn_and_missing_weights_name_the_path(clf_file, tmp_path, capsys):
    network = fmnist_network(clf_file)
    rng = np.random.default_rng(0)
    few = runner.SetSummary("k=1", feature_statistics(rng.standard_normal((20, 128))))
    ref = runner.SetSummary("real", feature_statistics(rng.standard_normal((300, 128))))
    with pytest.warns(runner.FewSamplesWarning, match=r"20 samples but 128 feature dimensions.*singular"):
        row = runner.score(network, few, ref)
    assert math.isfinite(row["fid"]) and row["num_samples"] == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough samples: no warning
        runner.score(network, ref, ref)
    missing = tmp_path / "nowhere" / "inception.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inception_network(missing)
    argv = ["rfid", "--workdir", str(tmp_path / "w"), "--tokenizer", "unused", "--network", "dinov2",
            "--weights", str(missing.with_name("dino.safetensors"))]
    assert commands.main(argv) == 2
    assert str(missing.with_name("dino.safetensors")) in capsys.readouterr().err


def test_fid_by_k_in_memory_as_the_main_job_uses_it(clf_file, source):
    network = fmnist_network(clf_file)
    x = runner.load_source_images(source, 0, 160, 32)
    noisy = np.clip(x + 0.5 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32), -1, 1)
    rows = runner.fid_by_k(network, x, np.stack([x, noisy]), [1, 2], batch_size=32, mesh=runner.default_mesh())
    assert [r["k"] for r in rows] == [1, 2]
    assert abs(rows[0]["fid"]) < 1e-6 and rows[1]["fid"] > 0.1  # identical images: 0; noisy ones: not (0.62)
    with pytest.raises(ValueError, match="K=3"):
        runner.fid_by_k(network, x, np.stack([x, x]), [1, 2, 4])
