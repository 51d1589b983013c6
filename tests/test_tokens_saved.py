"""The tokens-saved benchmark (``benchmarks.tokens_saved``) and its photo crops (``benchmarks.photo_crops``).

A small pixel-space tokenizer with random parameters: the benchmark's shares and token counts
are checked against numpy on the tokenizer's own distances, so only the bookkeeping is under
test here (test_adaptive_tokens covers the choice of k on a trained model).
"""
import json

import numpy as np
import pytest
from PIL import Image

from flextok_jax.benchmarks import photo_crops, tokens_saved
from helpers import random_pixel_tokenizer_and_folder

N = 16
STEPS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint, image folder, model, params, images [7, 16, 16, 3] as the benchmark loads them)."""
    return random_pixel_tokenizer_and_folder(tmp_path_factory.mktemp("saved"), 7, params_seed=5, image_seed=1)


def test_shares_and_tokens_equal_numpy_on_the_tokenizer_distances(setup, tmp_path, capsys):
    ckpt, folder, model, params, images = setup
    _, ks, dist = model.reconstruction_distances(params, images, None, STEPS, 0)
    d = np.asarray(dist, np.float64)
    targets = [float(q) for q in np.quantile(d, [0.3, 0.7])]
    out = tokens_saved.main(["--tokenizer", str(ckpt), "--images", str(folder), "--quality", *map(str, targets),
                             "--quality_steps", str(STEPS), "--batch_size", "3", "--out", str(tmp_path / "r.json")])
    assert out["num_images"] == 7 and out["ks"] == [1, 2, 4, 8, 16]
    # Batches of 3, 3 and 1 give the distances of one batch of 7 (one fixed noise for all).
    np.testing.assert_allclose(out["mean_distance"], d.mean(axis=0), rtol=1e-5)
    for q, r in zip(targets, out["results"]):
        ok = d <= q
        assert r["fixed_share"] == {k: pytest.approx(ok[:, j].mean()) for j, k in enumerate(ks)}
        assert r["adaptive_share"] == pytest.approx(ok.any(axis=1).mean())
        chosen = [ks[np.argmax(row)] if row.any() else N for row in ok]
        assert r["adaptive_mean_tokens"] == pytest.approx(np.mean(chosen))
        assert r["adaptive_share"] >= max(r["fixed_share"].values())
    text = capsys.readouterr().out
    assert "tokens saved" in text and f"{targets[0]:g}" in text
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["results"][1]["target"] == pytest.approx(targets[1])
    assert saved["images"] == [f"im{i}.png" for i in range(7)]
    np.testing.assert_allclose(saved["distances"], d, rtol=1e-5)


def test_a_source_instead_of_a_folder(setup):
    ckpt = setup[0]
    out = tokens_saved.main(["--tokenizer", str(ckpt), "--source", "procedural", "--num_images", "5",
                             "--quality", "0.5", "--quality_steps", "1"])
    assert out["num_images"] == 5 and len(out["mean_distance"]) == 5


def test_bad_input(setup, tmp_path):
    ckpt, folder = setup[:2]
    with pytest.raises(SystemExit):  # both a folder and a source
        tokens_saved.parse_args(["--tokenizer", str(ckpt), "--images", str(folder), "--source", "procedural",
                                 "--quality", "0.1"])
    with pytest.raises(SystemExit):
        tokens_saved.parse_args(["--tokenizer", str(ckpt), "--images", str(folder), "--quality", "0"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        tokens_saved.main(["--tokenizer", str(ckpt), "--images", str(tmp_path / "empty"), "--quality", "0.1"])


def test_photo_crops_split_by_photo(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(photos / "b.png")  # grey
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photos / "c.jpg")
    counts = photo_crops.write_photo_crops(str(photos), str(tmp_path / "crops"), 16, 5, 3, ["b"])
    assert counts == {"train": 10, "test": 3}
    train = sorted(p.name for p in (tmp_path / "crops" / "train").iterdir())
    test = sorted(p.name for p in (tmp_path / "crops" / "test").iterdir())
    assert test == [f"b_{i:05d}.png" for i in range(3)]
    assert train == [f"{s}_{i:05d}.png" for s in "ac" for i in range(5)]
    for name in test:  # crops of the grey photo: RGB with three equal channels
        with Image.open(tmp_path / "crops" / "test" / name) as im:
            px = np.asarray(im)
        assert px.shape == (16, 16, 3) and np.array_equal(px[..., 0], px[..., 2]) and px.std() > 0
    with pytest.raises(ValueError, match="not in"):
        photo_crops.write_photo_crops(str(photos), str(tmp_path / "x"), 16, 1, 1, ["missing"])
    with pytest.raises(ValueError, match="smaller than"):
        photo_crops.write_photo_crops(str(photos), str(tmp_path / "y"), 32, 1, 1, ["b"])
