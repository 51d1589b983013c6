"""Tests for flextok_jax.data: sources, transforms, sharded/checkpointable pipeline."""

import io
import json
import logging
import pickle

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from flextok_jax.data import (
    CenterCrop,
    DecodeImage,
    FashionMnistSource,
    ImageFolderBuilder,
    ProceduralImageSource,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShorterSide,
    ScaleToSymmetricRange,
    SkipCounter,
    SkippedRecord,
    build_image_folder_dataset,
    get_source,
    make_dataset,
    tfds_source,
    to_global_batch,
)
from flextok_jax.data.fashion_mnist import APT_PACKAGE

# grain worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


class IndexSource:
    """Record i: a flat 6x6 image of value i % 256, label i; `bad` maps index -> broken image."""

    def __init__(self, n: int, bad: dict | None = None):
        self.n, self.bad = n, bad or {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        i = int(i)
        if self.bad.get(i) == "raise":
            raise OSError(f"disk error reading {i}")
        image = self.bad.get(i, np.full((6, 6, 3), i % 256, np.uint8))
        return {"image": image, "label": np.int32(i)}


def _labels(ds, max_batches=10_000):
    out = []
    for i, batch in enumerate(ds):
        if i >= max_batches:
            break
        out.append(batch["label"])
    return np.concatenate(out)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], y["image"])


# ----------------------------------------------------------------------------- sources


def test_procedural_is_deterministic_and_varied():
    a = ProceduralImageSource(num_images=50, image_size=32, seed=7)
    b = ProceduralImageSource(num_images=50, image_size=32, seed=7)
    other_seed = ProceduralImageSource(num_images=50, image_size=32, seed=8)
    assert len(a) == 50
    for i in (0, 13, 49):
        ra, rb = a[i], b[i]
        assert ra["image"].shape == (32, 32, 3) and ra["image"].dtype == np.uint8
        assert ra["label"].dtype == np.int32 and 0 <= ra["label"] < 5
        np.testing.assert_array_equal(ra["image"], rb["image"])
        np.testing.assert_array_equal(a[i]["image"], ra["image"])  # re-render, same index
        assert not np.array_equal(ra["image"], other_seed[i]["image"])
    images = np.stack([a[i]["image"] for i in range(50)])
    # Distinct pictures with real contrast and a spread of labels.
    assert len({im.tobytes() for im in images}) == 50
    assert images.reshape(50, -1).std(axis=1).min() > 5
    assert images.min() < 30 and images.max() > 225
    assert len({int(a[i]["label"]) for i in range(50)}) >= 4
    with pytest.raises(IndexError):
        a[50]


def test_fashion_mnist_from_debian_package():
    try:
        train = FashionMnistSource("train")
        test = FashionMnistSource("test")
    except FileNotFoundError as e:
        pytest.fail(f"Fashion-MNIST missing; CI must `apt-get install -y {APT_PACKAGE}`: {e}")
    assert (len(train), len(test)) == (60000, 10000)
    for src, i in ((train, 0), (train, 59999), (test, 9999)):
        r = src[i]
        assert r["image"].shape == (28, 28, 3) and r["image"].dtype == np.uint8
        assert np.array_equal(r["image"][..., 0], r["image"][..., 2])
        assert r["label"].dtype == np.int32 and 0 <= r["label"] <= 9
    labels = np.array([int(test[i]["label"]) for i in range(0, 10000, 7)])
    assert set(labels.tolist()) == set(range(10))
    assert train[0]["image"].max() > 100
    # Pickles without the arrays (grain workers reload lazily) and still reads.
    clone = pickle.loads(pickle.dumps(test))
    np.testing.assert_array_equal(clone[5]["image"], test[5]["image"])
    with pytest.raises(IndexError):
        test[10000]


def test_fashion_mnist_missing_files_names_path_and_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=APT_PACKAGE) as e:
        FashionMnistSource("train", root=tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="split"):
        FashionMnistSource("validation")


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_builder_round_trip_skips_corrupt(tmp_path, caplog):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    expected = {}
    for cls in ("cats", "dogs"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            (folder / cls / f"{i}.png").write_bytes(_png(img))
            expected[f"{cls}/{i}.png"] = img
    grey = rng.integers(0, 256, (9, 9), dtype=np.uint8)
    (folder / "dogs" / "grey.png").write_bytes(_png(grey))
    expected["dogs/grey.png"] = np.repeat(grey[..., None], 3, -1)
    (folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff definitely not a jpeg")

    with caplog.at_level(logging.WARNING):
        builder = ImageFolderBuilder(folder=folder, data_dir=tmp_path / "tfds")
        builder.download_and_prepare()
    assert builder.num_skipped == 1
    assert builder.info.metadata["num_skipped"] == 1
    assert any("broken.jpg" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    src = build_image_folder_dataset(folder, tmp_path / "tfds")
    assert len(list((tmp_path / "tfds" / "flextok_image_folder").iterdir())) == 1  # reused, not rebuilt
    assert len(src) == len(expected) == 7
    seen = {}
    for i in range(len(src)):
        r = src[i]
        name = r["file_name"].decode()
        seen[name] = r
        np.testing.assert_array_equal(r["image"], expected[name])
        assert r["label"] == (0 if name.startswith("cats/") else 1)
    assert set(seen) == set(expected)
    # Picklable for grain worker processes.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[0]["image"], src[0]["image"])
    # The prepared dataset is an ordinary tfds dataset: readable by name, no folder needed.
    by_name = tfds_source(f"flextok_image_folder/{builder.builder_config.name}", "train[:3]", tmp_path / "tfds")
    assert len(by_name) == 3 and by_name[0]["image"].dtype == np.uint8
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_source("mnist", "train", tmp_path / "tfds")

    batches = list(
        make_dataset(src, image_size=8, global_batch_size=3, seed=0, num_epochs=1,
                     process_index=0, process_count=1, skip_counter=SkipCounter())
    )
    assert len(batches) == 2 and batches[0]["image"].shape == (3, 8, 8, 3)


# -------------------------------------------------------------------------- transforms


def test_decode_resize_crop_flip_scale():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rec = DecodeImage().map({"image": _png(rgb), "label": 3, "index": 0})
    np.testing.assert_array_equal(rec["image"], rgb)
    assert rec["label"] == 3 and rec["label"].dtype == np.int32
    grey = DecodeImage().map({"image": rgb[..., 0], "index": 1})
    assert grey["image"].shape == (20, 30, 3) and grey["label"] == 0
    rgba = DecodeImage().map({"image": np.dstack([rgb, rgb[..., :1]]), "index": 1})
    np.testing.assert_array_equal(rgba["image"], rgb)

    for bad in (b"garbage bytes", np.zeros(7, np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8)):
        out = DecodeImage().map({"image": bad, "index": 42, "file_name": b"x/y.png"})
        assert isinstance(out, SkippedRecord) and out.index == 42 and out.file_name == "x/y.png"
        assert "record 42" in out.describe()
        # Markers pass untouched through every later transform.
        assert ResizeShorterSide(8).map(out) is out
        assert RandomCrop(8).random_map(out, np.random.default_rng(0)) is out
        assert ScaleToSymmetricRange().map(out) is out

    resized = ResizeShorterSide(16).map(rec)["image"]
    assert resized.shape == (16, 24, 3) and resized.dtype == np.uint8
    centre = CenterCrop(16).map({"image": resized})["image"]
    np.testing.assert_array_equal(centre, resized[:, 4:20])
    crops = {
        RandomCrop(16).random_map({"image": resized}, np.random.default_rng(s))["image"].tobytes()
        for s in range(20)
    }
    assert len(crops) > 1 and all(len(c) == 16 * 16 * 3 for c in crops)
    for crop in (CenterCrop(32).map, lambda r: RandomCrop(32).random_map(r, np.random.default_rng(0))):
        with pytest.raises(ValueError, match="smaller than crop 32"):
            crop({"image": resized})
    flipped = RandomHorizontalFlip(p=1.0).random_map({"image": centre}, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(flipped, centre[:, ::-1])
    kept = RandomHorizontalFlip(p=0.0).random_map({"image": centre}, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(kept, centre)

    scaled = ScaleToSymmetricRange().map({"image": np.array([[0, 255, 128]], np.uint8)})["image"]
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[-1.0, 1.0, 128 / 127.5 - 1]], atol=1e-6)


def test_pipeline_batches_shape_dtype_range():
    src = ProceduralImageSource(num_images=40, image_size=24, seed=0)
    it = iter(make_dataset(src, image_size=16, global_batch_size=8, seed=0, process_index=0, process_count=1))
    for batch in _take(it, 3):
        assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
        assert -1.0 <= batch["image"].min() < -0.5 and 0.5 < batch["image"].max() <= 1.0


@pytest.mark.parametrize("worker_count", [0, 1])  # 1: markers cross the process boundary
def test_pipeline_skips_and_counts_bad_records(caplog, worker_count):
    bad = {3: b"not an image", 7: np.zeros(5, np.uint8), 11: "raise"}
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING):
        ds = make_dataset(IndexSource(20, bad), image_size=4, global_batch_size=4, seed=0, num_epochs=1,
                          process_index=0, process_count=1, worker_count=worker_count, skip_counter=counter)
        labels = _labels(ds)
    assert counter.count == 3
    # 17 good records -> 4 full batches of 4, none of them bad.
    assert len(labels) == 16 and not set(labels.tolist()) & set(bad)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"record {i}" in messages for i in bad)


# ---------------------------------------------------------------- shuffling and sharding


def test_shuffle_is_seeded_and_processes_get_disjoint_strided_shards():
    n = 24
    kw = dict(image_size=4, global_batch_size=4, num_epochs=1, skip_counter=SkipCounter())
    order = _labels(make_dataset(IndexSource(n), seed=0, process_index=0, process_count=1, **kw))
    assert sorted(order.tolist()) == list(range(n))
    assert order.tolist() != list(range(n))
    other = _labels(make_dataset(IndexSource(n), seed=1, process_index=0, process_count=1, **kw))
    assert sorted(other.tolist()) == list(range(n)) and other.tolist() != order.tolist()
    plain = _labels(make_dataset(IndexSource(n), seed=0, shuffle=False, process_index=0, process_count=1, **kw))
    assert plain.tolist() == list(range(n))

    shards = [
        list(make_dataset(IndexSource(n), seed=0, process_index=p, process_count=2, **kw)) for p in range(2)
    ]
    for p, batches in enumerate(shards):
        assert all(b["label"].shape == (2,) for b in batches)
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), order[p::2])
    s0, s1 = (set(np.concatenate([b["label"] for b in bs]).tolist()) for bs in shards)
    assert not s0 & s1 and s0 | s1 == set(range(n))

    # Epochs are reshuffled, and augmentation does not depend on the process split.
    src = ProceduralImageSource(num_images=8, image_size=12, seed=0)
    aug = dict(image_size=8, global_batch_size=4, seed=5, skip_counter=SkipCounter())
    whole = _take(iter(make_dataset(src, process_index=0, process_count=1, **aug)), 4)
    half = _take(iter(make_dataset(src, process_index=1, process_count=2, **aug)), 2)
    whole_images = np.concatenate([b["image"] for b in whole])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in half]), whole_images[1::2][:4])
    two = _labels(make_dataset(IndexSource(8), seed=0, process_index=0, process_count=1,
                               **{**kw, "num_epochs": 2}))
    assert sorted(two[:8].tolist()) == sorted(two[8:].tolist()) == list(range(8))
    assert two[:8].tolist() != two[8:].tolist()

    with pytest.raises(ValueError, match=r"global_batch_size 5 .* process_count 2"):
        make_dataset(IndexSource(n), image_size=4, global_batch_size=5, seed=0, process_index=0, process_count=2)


# ------------------------------------------------------------------------ checkpointing


@pytest.mark.parametrize("worker_count", [0, 2])
def test_iterator_state_restore_gives_identical_batches(worker_count):
    src = ProceduralImageSource(num_images=16, image_size=12, seed=3)  # 16 / 4 -> crosses epochs
    kw = dict(image_size=8, global_batch_size=4, seed=11, process_index=0, process_count=1)
    reference = _take(iter(make_dataset(src, **kw)), 8)

    ds = make_dataset(src, worker_count=worker_count, **kw)
    it = iter(ds)
    first = _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    rest = _take(it, 3)
    resumed = iter(ds)
    resumed.set_state(state)
    again = _take(resumed, 3)
    if worker_count:
        it.close()
        resumed.close()
    _assert_batches_equal(first + rest, reference)  # worker count does not change the stream
    _assert_batches_equal(again, rest)


# --------------------------------------------------------------------- global batches


def test_to_global_batch_shards_batch_axis():
    assert jax.device_count() == 8
    devices = np.array(jax.devices())
    local = {
        "image": np.arange(8 * 4 * 4 * 3, dtype=np.float32).reshape(8, 4, 4, 3),
        "label": np.arange(8, dtype=np.int32),
    }

    mesh = Mesh(devices.reshape(4, 2), ("data", "fsdp"))
    out = to_global_batch(local, mesh)
    assert out["image"].shape == (8, 4, 4, 3) and out["label"].shape == (8,)
    assert out["image"].sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None, None)), 4)
    assert out["label"].sharding.spec == PartitionSpec(("data", "fsdp"))
    shards = out["image"].addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(1, 4, 4, 3)}
    for s in shards:
        np.testing.assert_array_equal(np.asarray(s.data), local["image"][s.index])
    np.testing.assert_array_equal(np.asarray(out["label"]), local["label"])

    # Model-parallel axis: batch split 4 ways, replicated over "model".
    mesh3 = Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "model"))
    out3 = to_global_batch(local, mesh3)
    assert {s.data.shape for s in out3["image"].addressable_shards} == {(2, 4, 4, 3)}
    assert not out3["image"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="fsdp"):
        to_global_batch(local, Mesh(devices, ("data",)))


# ---------------------------------------------------------------------------- factory


def test_get_source_factory(tmp_path):
    cfg = ml_collections.ConfigDict(
        dict(source="procedural", image_size=16, num_images=10, split="train",
             folder="", data_dir="", name="", seed=2)
    )
    src = get_source(cfg)
    assert isinstance(src, ProceduralImageSource) and len(src) == 10
    np.testing.assert_array_equal(src[3]["image"], ProceduralImageSource(10, 16, seed=2)[3]["image"])

    cfg.source = "fashion_mnist"
    cfg.split = "test"
    assert len(get_source(cfg)) == 10000

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(_png(np.full((5, 5, 3), i, np.uint8)))
    cfg.source, cfg.folder, cfg.data_dir, cfg.split = "image_folder", str(folder), str(tmp_path / "tfds"), "train"
    assert len(get_source(cfg)) == 2

    cfg.source = "imagenet_from_the_moon"
    with pytest.raises(ValueError, match="imagenet_from_the_moon"):
        get_source(cfg)


def test_held_out_images_of_an_image_folder_come_from_eval_split(tmp_path, caplog):
    from flextok_jax.evaluate.reconstruct import held_out_images

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(6):  # picture i is flat grey 40 * i, so each one is known by its value
        (folder / f"{i}.png").write_bytes(_png(np.full((8, 8, 3), 40 * i, np.uint8)))
    cfg = ml_collections.ConfigDict(dict(source="image_folder", folder=str(folder), data_dir=str(tmp_path / "tfds"),
                                         split="train[:4]", eval_split="train[4:]"))
    held = held_out_images(cfg, 8, 10)
    train = {int(r["image"][0, 0, 0]) for r in get_source(cfg)}
    values = {int(round((v + 1) * 127.5)) for v in held[:, 0, 0, 0]}
    assert len(held) == 2 and len(train) == 4 and not values & train, (values, train)
    cfg.eval_split = ""
    with caplog.at_level(logging.WARNING):
        assert len(held_out_images(cfg, 8, 10)) == 4
    assert any("no held-out split" in r.getMessage() for r in caplog.records)
