"""The Fashion-MNIST judge classifier: preprocessing, a real accuracy bound, save/load, per-k scores."""
import numpy as np
import pytest

from flextok_jax.data.fashion_mnist import FashionMnistSource
from flextok_jax.data.transforms import prepare_eval_image
from flextok_jax.evaluate import classifier as C

@pytest.fixture(scope="module")
def data():
    train = C.fashion_mnist_arrays("train", num_images=8_000)
    test = C.fashion_mnist_arrays("test", num_images=2_000)
    return train, test


@pytest.fixture(scope="module")
def trained(data):
    (x, y), _ = data
    # 250 steps of batch 128 (4 epochs of 8000 images): about 20 s on an idle 2-core CPU.
    return C.train_classifier(x, y, steps=250, seed=0, lr=4e-3, flip=False)


def test_arrays_follow_the_tokenizer_preprocessing(data):
    (x, y), _ = data
    source = FashionMnistSource("train")
    for i in (0, 17, 7_999):
        ref = prepare_eval_image({**source[i], "index": i}, C.IMAGE_SIZE)
        np.testing.assert_array_equal(x[i], ref["image"])
        assert y[i] == ref["label"]
    assert x.shape == (8_000, 32, 32, 3) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0


def test_accuracy_on_held_out_images(data, trained):
    _, (x_test, y_test) = data
    acc = C.accuracy(trained, x_test, y_test)
    # Full training (60000 images, 1400 steps) reaches about 0.90; this short run at least 0.80.
    assert acc >= 0.80, acc
    # One grey channel and the grey-replicated RGB picture are the same input.
    np.testing.assert_array_equal(C.classify(trained, x_test[:200, :, :, :1]), C.classify(trained, x_test[:200]))


def test_save_load_round_trip(tmp_path, data, trained):
    _, (x_test, _) = data
    path = tmp_path / "clf.safetensors"
    C.save_classifier(path, trained)
    loaded = C.load_classifier(path)
    np.testing.assert_array_equal(C.classify(loaded, x_test[:300]), C.classify(trained, x_test[:300]))
    bad = dict(loaded, logits={"kernel": np.zeros((3, 10), np.float32), "bias": loaded["logits"]["bias"]})
    C.save_classifier(tmp_path / "bad.safetensors", bad)
    with pytest.raises(ValueError, match="logits/kernel"):
        C.load_classifier(tmp_path / "bad.safetensors")


def test_class_accuracy_by_k(data, trained):
    _, (x_test, y_test) = data
    x, y = x_test[:400], y_test[:400]
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    blank = -np.ones_like(x)
    got = C.class_accuracy_by_k(trained, np.stack([x, blank, x + 5.0 * noise]), y, [1, 2, 4])
    assert got[1] == pytest.approx(float(np.mean(C.classify(trained, x) == y)))
    # A blank picture gets one class for all: its share is that class's share of the labels.
    assert got[2] == pytest.approx(float(np.mean(y == C.classify(trained, blank[:1])[0])))
    assert got[4] < got[1] - 0.3
    with pytest.raises(ValueError, match="K=2"):
        C.class_accuracy_by_k(trained, np.stack([x, x, x]), y, [1, 2])
    with pytest.raises(ValueError, match=r"\[B, 32, 32"):
        C.classify(trained, np.zeros((2, 28, 28, 3), np.float32))
    assert len(C.CLASS_NAMES) == 10 and C.CLASS_NAMES[9] == "Ankle boot"
