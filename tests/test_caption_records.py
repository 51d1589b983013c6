"""Caption data: image folders with captions.jsonl or sidecar .txt files, captions stored in
token records (tokenize-dataset --caption_key), and the text generator trained on each
record's own caption (data.captions='records')."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import N_TOKENS, REPO, VOCAB, losses, write_procedural_token_dataset
from PIL import Image

from flextok_jax.data.image_folder import _list_images, build_image_folder_dataset, read_captions
from flextok_jax.data.token_source import TokenDataSource
from flextok_jax.text import MiniLM
from flextok_jax.train import TrainSetup, train
from flextok_jax.train import config as common

CAPTIONS = {"a/0.png": "a red square", "a/1.png": "", "a/2.png": "a red square on black", "b/0.png": "two blue bars",
            "b/1.png": "blue bars, thin", "b/2.png": "une barre bleue, café"}


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((32, 32, 3), np.uint8)
    y, x = rng.integers(0, 20, 2)
    image[y: y + 12, x: x + 12] = rng.integers(60, 255, 3)
    return image


def _folder(root: pathlib.Path, sidecars: bool) -> pathlib.Path:
    for i, rel in enumerate(CAPTIONS):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_picture(i)).save(path)
        if sidecars and CAPTIONS[rel]:
            path.with_suffix(".txt").write_text(CAPTIONS[rel] + "\n", encoding="utf-8")
    if not sidecars:
        rows = [{"path": rel, "caption": text} for rel, text in CAPTIONS.items() if text]
        (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tokenizer_ckpt(tmp_path_factory):
    token_dir = write_procedural_token_dataset(tmp_path_factory.mktemp("caption_tok"))
    return os.path.join(os.path.dirname(token_dir), "tokenizer.safetensors")


@pytest.fixture(scope="module")
def captioned_tokens(tmp_path_factory, tokenizer_ckpt):
    root = tmp_path_factory.mktemp("captioned")
    folder = _folder(root / "images", sidecars=True)
    out = root / "tokens"
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.cli", "tokenize-dataset", "--checkpoint", tokenizer_ckpt,
         "--source", "image_folder", "--folder", str(folder), "--data_dir", str(root / "tfds"), "--image_size", "32",
         "--out", str(out), "--batch_size", "8", "--caption_key", "caption", "--augment", "flip"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return str(out), build_image_folder_dataset(folder, root / "tfds")


def test_captions_from_sidecars_or_a_jsonl(tmp_path):
    for sidecars in (True, False):
        folder = _folder(tmp_path / f"sidecars_{sidecars}", sidecars)
        _, files = _list_images(folder)
        got = dict(zip((p.relative_to(folder).as_posix() for p, _ in files), read_captions(folder, files)))
        assert got == CAPTIONS
    bad = tmp_path / "sidecars_False" / "captions.jsonl"
    bad.write_text('{"path": "a/0.png", "caption": "ok"}\n{"path": 3}\n', encoding="utf-8")
    _, files = _list_images(bad.parent)
    with pytest.raises(ValueError, match=r"captions.jsonl line 2: expected \{\"path\": str, \"caption\": str\}"):
        read_captions(bad.parent, files)


def test_token_records_carry_each_images_caption(captioned_tokens):
    tokens, images = captioned_tokens
    source = TokenDataSource(tokens)
    assert source.manifest["caption_key"] == "caption" and len(source) == 12  # 6 images x (plain, flip)
    rows = source.read_batch(range(len(source)))
    for caption, index in zip(rows["caption"], rows["index"]):
        name = images[int(index)]["file_name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        assert caption == CAPTIONS[name], (index, name, caption)
    assert sorted(set(rows["caption"])) == sorted(set(CAPTIONS.values()))


def _records_config(tokens: str, **train_fields):
    c = common.text_generator_base_config(common.generator_model(
        depth=2, num_classes=0, vocab_size=VOCAB, max_tokens=N_TOKENS, dim=64, num_heads=2, head_dim=32),
        max_text_tokens=16)
    c.data.tokens, c.data.captions = tokens, "records"
    c.train.global_batch_size, c.train.total_steps = 8, 30
    c.optimizer.lr, c.optimizer.warmup_steps = 3e-3, 2
    c.log.every_steps, c.log.progress = 1, False
    c.checkpoint.every_steps, c.checkpoint["async"] = 30, False
    for k, v in train_fields.items():
        c.train[k] = v
    return c


def test_text_generator_trains_on_record_captions(captioned_tokens, tmp_path):
    captioned_tokens, _ = captioned_tokens
    config = _records_config(captioned_tokens)
    encoder = MiniLM.from_pretrained()
    setup = TrainSetup.from_config(config, devices=jax.devices()[:1])
    batch = next(iter(setup.task.dataset()))
    assert set(batch) == {"tokens", "label", "text_ids", "text_mask"} and batch["text_ids"].shape == (8, 16)
    state = setup.init_state()
    # The step's prefix is MiniLM's features of the records' captions, as MiniLM.encode gives them.
    source = TokenDataSource(captioned_tokens)
    ids = [int(np.flatnonzero((source.read_batch(range(12))["tokens"] == t).all(1))[0]) for t in batch["tokens"]]
    captions = [str(source[i]["caption"]) for i in ids]
    cond, _ = setup.task.condition(state.frozen, jax.device_put(batch), jax.random.key(0))
    want = encoder.encode(captions, max_length=16)
    np.testing.assert_allclose(np.asarray(cond.pooled), np.asarray(want.pooled), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cond.tokens) * np.asarray(want.mask)[..., None],
                               np.asarray(want.tokens) * np.asarray(want.mask)[..., None], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(cond.null), [c == "" for c in captions])  # "" is the null prompt
    result = train(config, tmp_path / "run")
    got = losses(tmp_path / "run")
    assert result["step"] == 30 and abs(got[1] - np.log(VOCAB)) < 0.05, got[1]
    assert np.mean([got[s] for s in range(26, 31)]) < 0.8 * got[1]  # 12 records, learned by heart


def test_records_mode_needs_captions_in_the_records(tmp_path):
    plain = write_procedural_token_dataset(tmp_path)  # written without --caption_key
    with pytest.raises(ValueError, match="hold no captions .* --caption_key"):
        TrainSetup.from_config(_records_config(plain)).task.dataset()
    bad = _records_config(plain)
    bad.data.captions = "sidecars"
    with pytest.raises(ValueError, match="data.captions must be 'templates' or 'records'"):
        TrainSetup.from_config(bad)
