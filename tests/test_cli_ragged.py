"""``flextok tokenize --quality``: ragged token files (npz + lengths, array_record rows of their
own length), the k histogram, and ``detokenize`` at each image's own length.

A small pixel-space model with random parameters (``benchmarks.models.random_params``): only
the file plumbing is under test here; test_adaptive_tokens covers the choice of k.
"""
import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from flax.serialization import msgpack_restore
from PIL import Image

from flextok_jax import cli
from helpers import random_pixel_tokenizer_and_folder

N = 16
STEPS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint path, image folder, model, params, images [6, 16, 16, 3] as the CLI loads them)."""
    return random_pixel_tokenizer_and_folder(tmp_path_factory.mktemp("ragged"), 6, params_seed=3, image_seed=0)


def mixed_target(model, params, images) -> tuple[float, np.ndarray]:
    """A target at which the chosen k differ between images, and those k."""
    _, _, dist = model.reconstruction_distances(params, images)
    for target in np.quantile(np.asarray(dist), np.linspace(0.05, 0.95, 19)):
        k = model.tokenize_adaptive(params, images, float(target)).num_tokens
        if len(set(k.tolist())) >= 2:
            return float(target), k
    raise AssertionError(f"no target gives mixed k for distances {np.asarray(dist)}")


@pytest.mark.parametrize("suffix", [".npz", ".array_record"])
def test_ragged_round_trip(tmp_path, setup, suffix):
    ckpt, folder, model, params, images = setup
    target, want_k = mixed_target(model, params, images)
    want_ids = np.asarray(model.tokenize(params, images))
    out = tmp_path / f"tokens{suffix}"
    hist = tmp_path / "hist.png"
    assert cli.main(["tokenize", "--checkpoint", str(ckpt), "--images", str(folder), "--out", str(out),
                     "--batch_size", "4", "--quality", repr(target), "--histogram", str(hist)]) == 0
    names, tokens, lengths = cli.read_token_file(out)
    assert names == [f"im{i}.png" for i in range(6)]
    np.testing.assert_array_equal(lengths, want_k)
    assert tokens.shape == (6, want_k.max())
    for i, k in enumerate(want_k):
        np.testing.assert_array_equal(tokens[i, :k], want_ids[i, :k])
        assert np.all(tokens[i, k:] == cli.PAD_ID)
    if suffix == ".array_record":  # rows really have their own lengths on disk
        reader = ArrayRecordReader(str(out))
        rows = [msgpack_restore(r)["tokens"] for r in reader.read_all()]
        reader.close()
        assert [len(r) for r in rows] == want_k.tolist()
    with Image.open(hist) as im:
        assert im.format == "PNG" and im.size == (600, 350)
    with pytest.raises(ValueError, match="ragged"):
        cli.read_tokens(out)

    out_dir = tmp_path / "png"
    assert cli.main(["detokenize", "--checkpoint", str(ckpt), "--tokens", str(out), "--out_dir", str(out_dir),
                     "--steps", str(STEPS), "--batch_size", "8"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"im{i}_k{k}.png" for i, k in enumerate(want_k))
    # The same decode by hand: one batch of 6, each image at its own k, the CLI's first key.
    _, sub = jax.random.split(jax.random.key(0))
    direct = model.detokenize(params, np.where(tokens < 0, 0, tokens), keep_k=want_k, num_steps=STEPS, rng=sub)
    direct = np.clip((np.asarray(direct) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    for i, k in enumerate(want_k):
        written = np.asarray(Image.open(out_dir / f"im{i}_k{k}.png"))
        assert np.abs(written.astype(int) - direct[i]).max() <= 1  # uint8 rounding of float noise

    # Explicit k: clipped per image to its own length, each distinct k written once.
    both = tmp_path / "both"
    assert cli.main(["detokenize", "--checkpoint", str(ckpt), "--tokens", str(out), "--out_dir", str(both),
                     "--keep_k", "1", "16", "--steps", str(STEPS)]) == 0
    expected = {f"im{i}_k{kk}.png" for i, k in enumerate(want_k) for kk in {1, min(16, int(k))}}
    assert {p.name for p in both.iterdir()} == expected


def test_bad_input_gives_clear_errors(tmp_path, setup, capsys):
    ckpt, folder, *_ = setup
    base = ["tokenize", "--checkpoint", str(ckpt), "--images", str(folder), "--out", str(tmp_path / "t.npz")]
    for bad in ("0", "-0.5", "nan"):
        assert cli.main(base + ["--quality", bad]) == 2
        assert "--quality must be a finite distance > 0" in capsys.readouterr().err
    assert cli.main(base + ["--quality", "0.1", "--num_tokens", "4"]) == 2
    assert "exclude each other" in capsys.readouterr().err

    names = np.asarray(["a.png", "b.png", "c.png"])
    tokens = np.array([[5, 6, -1], [7, -1, -1], [1, 2, 3]], np.int32)
    cases = {
        "short.npz": (np.array([2, 1], np.int32), "lengths must be an int array of shape \\[3\\]"),
        "long.npz": (np.array([2, 1, 4], np.int32), "lengths must lie in \\[1, 3\\]"),
        "zero.npz": (np.array([2, 0, 3], np.int32), "lengths must lie in \\[1, 3\\]"),
        "pads.npz": (np.array([3, 1, 3], np.int32), "image 0 has length 3 but a pad"),
    }
    for name, (lengths, message) in cases.items():
        np.savez(tmp_path / name, tokens=tokens, files=names, lengths=lengths)
        with pytest.raises(ValueError, match=message):
            cli.read_token_file(tmp_path / name)
        assert cli.main(["detokenize", "--checkpoint", str(ckpt), "--tokens", str(tmp_path / name),
                         "--out_dir", str(tmp_path / "x"), "--steps", "1"]) == 2
        assert "lengths" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lengths must lie"):
        cli.write_tokens(tmp_path / "w.npz", list(names), tokens, np.array([1, 1, 9]))
