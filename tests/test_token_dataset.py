"""Token datasets for the generator: tokenize a source into shards, resume, split, read back."""
import filecmp
import json
import logging
import os
import pathlib
import pickle
import re
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, save_params
from flextok_jax.data import FashionMnistSource, ProceduralImageSource, build_image_folder_dataset
from flextok_jax.data import token_dataset as TD
from flextok_jax.data import token_records as R
from flextok_jax.data.token_source import TokenDataSource, check_compatible, make_token_dataset
from flextok_jax.data.token_views import VIEW_NAMES, render_views, view_ids
from flextok_jax.data.transforms import prepare_eval_image

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
# Reference run shared by the resume, split and reader tests: 40 images, 8 per shard -> 5 shards.
NUM_IMAGES, PER_SHARD, BATCH = 40, 8, 16


class Head:
    """The first n records of a source (a small slice of a big dataset)."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"Head({self.source!r}, {self.n})"

    def __getitem__(self, i):
        if not 0 <= int(i) < self.n:
            raise IndexError(i)
        return self.source[int(i)]


class Broken(Head):
    """Record 3 holds bytes that are no image, reading record 5 fails."""

    def __getitem__(self, i):
        if int(i) == 3:
            return {"image": b"not an image at all", "label": np.int32(0)}
        if int(i) == 5:
            raise OSError("disk error")
        return super().__getitem__(i)


@pytest.fixture(scope="module")
def tiny():
    """A one-block pixel-space FlexTok for 32 px images (vocab 1000, 16 tokens).

    Parameters are random normals of the initialiser's shapes: any weights serve to compare
    tokens, and ``model.init`` costs tens of seconds of eager dispatch on a shared CPU.
    """
    block = TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0)
    config = FlexTokConfig(encoder=block, decoder=block, n_registers=16, fsq_levels=(8, 5, 5, 5),
                           latent_channels=3, patch_size=(4, 4), patch_grid=(8, 8), vae=None)
    model = FlexTok(config)
    rng = np.random.default_rng(0)

    def random_like(leaf):
        fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return model, jax.tree.map(random_like, jax.eval_shape(model.init, jax.random.key(0)))


def _eval_images(source, indices):
    """The evaluation transform applied independently of the writer: float32 [N, S, S, 3]."""
    return np.stack([prepare_eval_image({**source[i], "index": i}, SIZE)["image"] for i in indices])


def _model_tokens(tiny, images, num_tokens=None):
    """``model.tokenize`` of ``images`` in zero-padded batches of BATCH (one compiled shape)."""
    model, params = tiny
    pad = -len(images) % BATCH
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    chunks = [model.tokenize(params, padded[i : i + BATCH], num_tokens) for i in range(0, len(padded), BATCH)]
    return np.concatenate([np.asarray(c) for c in chunks])[: len(images)]


def _read_all(path):
    src = TokenDataSource(path)
    rows = [src[i] for i in range(len(src))]
    return src, {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _tokenize(tiny, source, out, **kwargs):
    model, params = tiny
    kwargs = {"image_size": SIZE, "batch_size": BATCH, "records_per_shard": PER_SHARD, "progress": False, **kwargs}
    return TD.tokenize_dataset(model, params, source, out, **kwargs)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted single-process run over 40 procedural images."""
    out = tmp_path_factory.mktemp("reference")
    summary = _tokenize(tiny, ProceduralImageSource(NUM_IMAGES, SIZE), out)
    assert summary["shards_written"] == 5 and summary["records_written"] == NUM_IMAGES
    return out


def _assert_same_files(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    assert not [n for n in names if n.endswith(".tmp")]
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


# --------------------------------------------------------------------------- writing


def test_tokens_equal_model_tokenize_with_flip_views(tiny, tmp_path):
    model, _ = tiny
    source = ProceduralImageSource(24, SIZE)
    summary = _tokenize(tiny, source, tmp_path, augment=("flip",))
    assert summary["manifest"] == str(tmp_path / R.MANIFEST_NAME) and summary["num_shards"] == 6
    src, got = _read_all(tmp_path)
    # Every image's views in order: (index, view) = (0, 0), (0, 1), (1, 0), ...
    np.testing.assert_array_equal(got["index"], np.repeat(np.arange(24), 2))
    np.testing.assert_array_equal(got["augmentation"], np.tile([0, 1], 24))
    np.testing.assert_array_equal(got["label"], np.repeat([source[i]["label"] for i in range(24)], 2))
    assert got["tokens"].dtype == np.int32 and got["tokens"].shape == (48, 16)
    images = _eval_images(source, range(24))
    np.testing.assert_array_equal(got["tokens"][0::2], _model_tokens(tiny, images))
    np.testing.assert_array_equal(got["tokens"][1::2], _model_tokens(tiny, images[:, :, ::-1]))

    manifest = src.manifest
    assert manifest["vocab_size"] == model.config.vocab_size == 1000 and manifest["num_tokens"] == 16
    assert FlexTokConfig.from_dict(manifest["tokenizer"]) == model.config
    assert [s["num_records"] for s in manifest["shards"]] == [8] * 6  # 4 images x 2 views each
    assert manifest["views"] == {"0": "center", "1": "center_flip"} and manifest["num_skipped"] == 0
    assert manifest["source"]["description"] == repr(source) and manifest["source"]["num_images"] == 24


def test_fashion_mnist_slice_through_the_training_transforms(tiny, tmp_path):
    source = Head(FashionMnistSource("train"), 40)
    _tokenize(tiny, source, tmp_path, num_tokens=4, records_per_shard=64)
    src, got = _read_all(tmp_path)
    assert src.num_tokens == 4 and got["tokens"].shape == (40, 4)
    images = _eval_images(source, range(40))
    assert images.shape == (40, SIZE, SIZE, 3)  # 28 px grey -> 32 px RGB, as in training
    np.testing.assert_array_equal(got["tokens"], _model_tokens(tiny, images, 4))
    np.testing.assert_array_equal(got["label"], [source[i]["label"] for i in range(40)])


def test_views_are_the_documented_crops_and_flips():
    assert view_ids(()) == (0,) and view_ids(("flip",)) == (0, 1)
    assert view_ids(("crop",)) == (0, 2, 3, 4, 5, 6) and view_ids(("crop", "flip")) == tuple(range(12))
    with pytest.raises(ValueError, match="rotate"):
        view_ids(("rotate",))
    # A 35 px square is exactly int(1.1 * 32) px: the crops are plain slices of it.
    image = np.random.default_rng(0).integers(0, 256, (35, 35, 3), dtype=np.uint8)
    views = render_views(image, SIZE, range(12))
    scaled = image.astype(np.float64) / 127.5 - 1
    crops = {"crop_center": scaled[1:33, 1:33], "crop_top_left": scaled[:32, :32], "crop_top_right": scaled[:32, 3:],
             "crop_bottom_left": scaled[3:, :32], "crop_bottom_right": scaled[3:, 3:]}
    for name, expected in crops.items():
        np.testing.assert_allclose(views[VIEW_NAMES.index(name)], expected, atol=1e-6)
        np.testing.assert_allclose(views[VIEW_NAMES.index(name + "_flip")], expected[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(views[0], prepare_eval_image({"image": image}, SIZE)["image"])
    np.testing.assert_array_equal(views[1], views[0][:, ::-1])


def test_resume_after_interruption_equals_uninterrupted_run(tiny, tmp_path, monkeypatch, reference):
    write_shard = TD._write_shard
    calls = []

    def dies_in_third_shard(path, records):
        calls.append(path.name)
        if len(calls) == 3:  # killed half-way through writing: a partial temporary file remains
            path.with_name(path.name + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        write_shard(path, records)

    monkeypatch.setattr(TD, "_write_shard", dies_in_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _tokenize(tiny, ProceduralImageSource(NUM_IMAGES, SIZE), tmp_path)
    complete = {n: (tmp_path / n).stat() for n in calls[:2]}
    with pytest.raises(FileNotFoundError, match="unfinished"):
        TokenDataSource(tmp_path)  # no manifest yet; the partial shard is never read

    monkeypatch.setattr(TD, "_write_shard", write_shard)
    summary = _tokenize(tiny, ProceduralImageSource(NUM_IMAGES, SIZE), tmp_path)
    assert (summary["shards_already_complete"], summary["shards_written"]) == (2, 3)
    for name, before in complete.items():  # complete shards were not rewritten
        after = (tmp_path / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    _assert_same_files(tmp_path, reference)

    with pytest.raises(ValueError, match="num_tokens: found 16, this run 8"):
        _tokenize(tiny, ProceduralImageSource(NUM_IMAGES, SIZE), tmp_path, num_tokens=8)


def test_two_processes_write_disjoint_shards_whose_union_is_the_single_process_run(tiny, tmp_path, reference):
    assert TD.shards_of_process(5, 0, 2) == [0, 2, 4] and TD.shards_of_process(5, 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="process_index 2"):
        TD.shards_of_process(5, 2, 2)
    source = ProceduralImageSource(NUM_IMAGES, SIZE)
    first = _tokenize(tiny, source, tmp_path, process_index=0, process_count=2)
    shards = sorted(p.name for p in tmp_path.glob("*.array_record"))
    assert shards == [R.shard_name(s, 5) for s in (0, 2, 4)] and first["manifest"] is None
    second = _tokenize(tiny, source, tmp_path, process_index=1, process_count=2)
    assert second["shards_written"] == 2 and second["shards_already_complete"] == 0
    assert second["manifest"] is not None  # the process finishing the last shard writes it
    _assert_same_files(tmp_path, reference)


def test_corrupt_images_are_skipped_counted_and_named(tiny, tmp_path, caplog):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with caplog.at_level(logging.WARNING):
        source = build_image_folder_dataset(folder, tmp_path / "tfds")
        _tokenize(tiny, source, tmp_path / "folder_tokens")
    assert "broken.jpg" in caplog.text
    src, got = _read_all(tmp_path / "folder_tokens")
    assert src.manifest["source"]["skipped_when_built"] == 1 and len(src) == 6
    np.testing.assert_array_equal(got["tokens"], _model_tokens(tiny, _eval_images(source, range(6))))

    # Records that fail while tokenizing (bad bytes, a read error) go through SkippedRecord markers.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        summary = _tokenize(tiny, Broken(ProceduralImageSource(12, SIZE), 12), tmp_path / "broken_tokens")
    assert summary["images_skipped"] == 2
    assert "record 3" in caplog.text and "record 5" in caplog.text and "disk error" in caplog.text
    src, got = _read_all(tmp_path / "broken_tokens")
    assert src.manifest["num_skipped"] == 2 and [s["index"] for s in src.manifest["skipped"]] == [3, 5]
    assert [s["num_records"] for s in src.manifest["shards"]] == [6, 4]
    np.testing.assert_array_equal(got["index"], [0, 1, 2, 4, 6, 7, 8, 9, 10, 11])


# --------------------------------------------------------------------------- reading


def test_record_layout_is_the_documented_struct():
    tokens = np.array([[0, 999, 65535], [7, 8, 9]])
    records = R.encode_records(tokens, np.int32([4, -1]), np.int64([2**40, 3]), np.uint8([0, 11]), np.array([3, 1]))
    # Independently of numpy's structured dtype: header "<4sBBHiqHH" (24 bytes), then uint16 tokens.
    assert [len(r) for r in records] == [30, 30]
    assert struct.unpack("<4sBBHiqHH", records[0][:24]) == (b"FTOK", 2, 0, 3, 4, 2**40, 3, 0)
    assert struct.unpack("<4sBBHiqHH", records[1][:24]) == (b"FTOK", 2, 11, 3, -1, 3, 1, 0)
    assert np.frombuffer(records[0][24:], "<u2").tolist() == [0, 999, 65535]
    rows, captions = R.decode_records(records, 3, "record {}".format)
    np.testing.assert_array_equal(rows["tokens"], tokens)
    np.testing.assert_array_equal(rows["length"], [3, 1])
    assert captions == ["", ""]
    rows, _ = R.decode_records(R.encode_records(tokens, np.int32([0, 0]), np.int64([0, 1]), np.uint8([0, 0])), 3,
                               "record {}".format)
    assert rows["length"].tolist() == [3, 3]  # default: every token
    # A caption follows the tokens as UTF-8, its byte count in the header.
    with_text = R.encode_records(tokens, np.int32([0, 0]), np.int64([0, 1]), np.uint8([0, 0]),
                                 captions=["a café", ""])
    assert len(with_text[0]) == 30 + 7 and with_text[0][30:] == "a café".encode()
    assert struct.unpack("<H", with_text[0][22:24]) == (7,)
    assert R.decode_records(with_text, 3, "record {}".format)[1] == ["a café", ""]
    with pytest.raises(ValueError, match="record 0: record has 36 bytes, expected 30 for 3 tokens \\+ 7 of caption"):
        R.decode_records([with_text[0][:-1]], 3, "record {}".format)
    with pytest.raises(ValueError, match="record 0: caption is not UTF-8"):
        R.decode_records([with_text[0][:-2] + b"\xff\xfe"], 3, "record {}".format)
    with pytest.raises(ValueError, match="caption of record 1 has 65536 bytes"):
        R.encode_records(tokens, np.int32([0, 0]), np.int64([0, 1]), np.uint8([0, 0]), captions=["", "x" * 65536])
    with pytest.raises(ValueError, match=r"lengths must be \[2\] in \[1, 3\]"):
        R.encode_records(tokens, np.int32([0, 0]), np.int64([0, 1]), np.uint8([0, 0]), np.array([0, 3]))
    bad = bytearray(records[1])
    bad[20:22] = struct.pack("<H", 4)
    with pytest.raises(ValueError, match=r"record 0: record length 4 outside \[1, 3\]"):
        R.decode_records([bytes(bad)], 3, "record {}".format)
    with pytest.raises(ValueError, match="record 1: record has 5 bytes, expected at least 30 for 3 tokens"):
        R.decode_records([records[0], b"12345"], 3, "record {}".format)
    with pytest.raises(ValueError, match="record 0: not a token record"):
        R.decode_records([b"X" + records[0][1:]], 3, "record {}".format)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 65536\)"):
        R.encode_records(np.array([[65536]]), np.int32([0]), np.int64([0]), np.uint8([0]))


def test_batches_shapes_split_and_iterator_state(reference):
    src, everything = _read_all(reference)
    per_process = []
    for p in range(2):
        ds = make_token_dataset(src, global_batch_size=8, seed=3, num_epochs=1, process_index=p, process_count=2)
        batches = list(ds)
        assert len(batches) == 5 and set(batches[0]) == {"tokens", "label"}
        assert batches[0]["tokens"].shape == (4, 16) and batches[0]["tokens"].dtype == np.int32
        assert batches[0]["label"].shape == (4,) and batches[0]["label"].dtype == np.int32
        per_process.append(np.concatenate([b["tokens"] for b in batches]))
    # One epoch over both processes is a permutation of all records.
    union = np.concatenate(per_process)
    assert sorted(map(tuple, union)) == sorted(map(tuple, everything["tokens"]))
    assert not np.array_equal(union, everything["tokens"])  # shuffled
    # grain worker processes receive the source pickled; it reopens its shards there.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[17]["tokens"], src[17]["tokens"])

    ds = make_token_dataset(src, global_batch_size=4, seed=0, process_index=0, process_count=1)
    it = iter(ds)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(12)]  # runs past the first epoch (40 records)
    resumed = iter(ds)
    resumed.set_state(json.loads(json.dumps(state)))  # the state is plain JSON, for checkpoints
    for a, b in zip(expected, (next(resumed) for _ in range(12))):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_mismatched_vocab_or_length_rejected(reference):
    src = TokenDataSource(reference)
    check_compatible(src, 1000, 16)
    check_compatible(str(reference), 1000, 16)
    manifest_path = str(reference / R.MANIFEST_NAME)
    with pytest.raises(ValueError, match=f"{re.escape(manifest_path)}: tokens have vocab_size 1000, the model expects 64000"):
        check_compatible(src, 64000, 16)
    with pytest.raises(ValueError, match="num_tokens 16, the model expects 256"):
        check_compatible(reference, 1000, 256)
    with pytest.raises(ValueError, match="given token manifest: tokens have num_tokens 16, the model expects 8"):
        check_compatible(src.manifest, 1000, 8)


def test_truncated_or_corrupt_shards_are_named(reference, tmp_path):
    shard = R.shard_name(1, 5)
    truncated = tmp_path / "truncated"
    shutil.copytree(reference, truncated)
    data = (truncated / shard).read_bytes()
    (truncated / shard).write_bytes(data[: len(data) // 2])
    # Depending on where the cut falls the reader fails to open it or finds fewer records.
    with pytest.raises(ValueError, match=f"token shard {re.escape(str(truncated / shard))} (is corrupt or truncated|holds 0 records, the manifest says 8)"):
        TokenDataSource(truncated)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(reference, corrupt)
    data = bytearray((corrupt / shard).read_bytes())
    data[100:140] = b"\0" * 40  # inside the first record's chunk
    (corrupt / shard).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"token shard {re.escape(str(corrupt / shard))} record 0 is unreadable"):
        TokenDataSource(corrupt)[8]



# --------------------------------------------------------------------------- command line


def test_cli_tokenize_dataset_end_to_end(tiny, tmp_path):
    model, params = tiny
    ckpt = tmp_path / "tiny.safetensors"
    save_params(ckpt, params, model.config)
    out = tmp_path / "tokens"
    # The subprocess inherits the 8 fake CPU devices: batches are split over a local mesh.
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.cli", "tokenize-dataset", "--checkpoint", str(ckpt),
         "--source", "procedural", "--num_images", "12", "--image_size", str(SIZE), "--out", str(out),
         "--augment", "flip", "--batch_size", "8", "--records_per_shard", "16"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["records_written"] == 24 and summary["num_shards"] == 2
    src, got = _read_all(out)
    assert src.manifest["metadata"]["checkpoint"] == str(ckpt)
    images = _eval_images(ProceduralImageSource(12, SIZE), range(12))
    np.testing.assert_array_equal(got["tokens"][0::2], _model_tokens(tiny, images))
    np.testing.assert_array_equal(got["tokens"][1::2], _model_tokens(tiny, images[:, :, ::-1]))
