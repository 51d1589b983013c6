"""The adaptive stage's measurements (``flextok_jax.evaluate.adaptive``) against hand counts, the
grid's per-cell labels, and ``FirstImages`` (the stage's training subset)."""
import numpy as np
import pytest
from PIL import Image

from flextok_jax.data import ProceduralImageSource
from flextok_jax.data.factory import FirstImages
from flextok_jax.evaluate import adaptive
from flextok_jax.evaluate.grid import save_labelled_grid
from flextok_jax.model.flextok import fewest_tokens

KS = [1, 2, 4, 8, 16]
# Five images (rows) x candidate k (columns); the target is 0.5.
DISTANCES = np.array([
    [0.4, 0.3, 0.3, 0.2, 0.2],  # meets it at k=1
    [0.9, 0.6, 0.45, 0.55, 0.3],  # at k=4, misses again at k=8 (a decode is not monotone in k)
    [0.9, 0.9, 0.9, 0.9, 0.9],  # never: keeps all 16
    [0.7, 0.7, 0.6, 0.6, 0.5],  # at k=16 (<= is within)
    [0.8, 0.5, 0.4, 0.3, 0.2],  # at k=2
])


def test_fewest_tokens_and_equal_quality_by_hand():
    chosen, met = fewest_tokens(DISTANCES, KS, 0.5, 16)
    np.testing.assert_array_equal(chosen, [1, 4, 16, 16, 2])
    np.testing.assert_array_equal(met, [True, True, False, True, True])
    q = adaptive.equal_quality(DISTANCES, KS, 0.5, 16)
    # Within the target at fixed k: k=1 {0}, k=2 {0, 4}, k=4 {0, 1, 4}, k=8 {0, 4}, k=16 {0, 1, 3, 4}.
    assert q["fixed_share"] == {1: 0.2, 2: 0.4, 4: 0.6, 8: 0.4, 16: 0.8}
    assert q["adaptive_share"] == 0.8
    assert q["adaptive_mean_tokens"] == pytest.approx((1 + 4 + 16 + 16 + 2) / 5)
    assert q["fixed_tokens_needed"] == 16
    assert q["tokens_saved"] == pytest.approx(16 - 7.8)
    assert q["saved_fraction"] == pytest.approx((16 - 7.8) / 16)
    assert q["num_images"] == 5 and q["target"] == 0.5


def test_equal_quality_when_no_fixed_k_reaches_the_adaptive_share():
    # Image 0 is within only at k=1, image 1 only at k=16: adaptive 100%, every fixed k 50%.
    d = np.array([[0.1, 0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9, 0.1]])
    q = adaptive.equal_quality(d, KS, 0.5, 16)
    assert q["adaptive_share"] == 1.0 and max(q["fixed_share"].values()) == 0.5
    assert q["fixed_tokens_needed"] == 16 and q["adaptive_mean_tokens"] == 8.5
    with pytest.raises(ValueError, match=r"distances must be \[N > 0, 5\]"):
        adaptive.equal_quality(d[:, :4], KS, 0.5, 16)


def test_lengths_by_class_and_table():
    lengths = np.array([1, 1, 16, 4, 2, 2, 2])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    rows = adaptive.lengths_by_class(lengths, labels, 3)
    assert rows[0] == {"class": 0, "count": 3, "mean": 6.0, "counts": {1: 2, 16: 1}}
    assert rows[1] == {"class": 1, "count": 4, "mean": 2.5, "counts": {2: 3, 4: 1}}
    assert rows[2]["count"] == 0 and np.isnan(rows[2]["mean"]) and rows[2]["counts"] == {}
    table = adaptive.format_lengths_table(["a", "b", "c"], rows, rows)
    assert "6.00" in table and "2.50" in table and len(table.splitlines()) == 5
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        adaptive.lengths_by_class(lengths, labels[:3], 3)


def test_lengths_chart_and_cell_labels(tmp_path):
    rows = adaptive.lengths_by_class(np.array([1, 16, 4]), np.array([0, 1, 1]), 2)
    adaptive.write_lengths_by_class(tmp_path / "lengths.png", ["a", "b"], rows, rows, "title")
    assert Image.open(tmp_path / "lengths.png").size == (800, 380)
    # Two columns of three 8 px cells, a yellow-on-black label in each cell's corner.
    columns = np.full((2, 3, 8, 8, 3), -1.0, np.float32)
    save_labelled_grid(tmp_path / "grid.png", columns, ["x", "y"], ["r0", "r1", "r2"],
                       [["k=1", "k=2"], ["k=3", "k=4"], ["k=5", "k=16"]])
    plain = tmp_path / "plain.png"
    save_labelled_grid(plain, columns, ["x", "y"], ["r0", "r1", "r2"])
    labelled = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(int)
    unlabelled = np.asarray(Image.open(plain).convert("RGB")).astype(int)
    yellow = (labelled[..., 0] > 200) & (labelled[..., 1] > 200) & (labelled[..., 2] < 80)
    assert yellow.sum() > 50 and not ((unlabelled[..., 0] > 200) & (unlabelled[..., 2] < 80)).any()


def test_first_images():
    source = ProceduralImageSource(num_images=10, image_size=8)
    first = FirstImages(source, 4)
    assert len(first) == 4 and repr(first) == f"{source!r}[:4]"
    np.testing.assert_array_equal(first[3]["image"], source[3]["image"])
    with pytest.raises(IndexError, match=r"index 4 out of range"):
        first[4]
    assert len(FirstImages(source, 100)) == 10
    with pytest.raises(ValueError, match="num_images must be positive"):
        FirstImages(source, 0)
