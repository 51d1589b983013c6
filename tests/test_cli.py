"""The tokenize / detokenize command-line tools, end to end on the parity checkpoint."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flextok_jax import cli
from helpers import fixture_vae_config


@pytest.fixture(scope="module")
def vae_json(tmp_path_factory, parity_io):
    path = tmp_path_factory.mktemp("vae") / "config.json"
    path.write_text(json.dumps(fixture_vae_config(parity_io).to_diffusers()))
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, parity_io):
    folder = tmp_path_factory.mktemp("images")
    pixels = np.round((parity_io["images"].transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels[0]).save(folder / "a.png")
    (folder / "sub").mkdir()
    Image.fromarray(np.asarray(Image.fromarray(pixels[1]).resize((96, 80)))).save(folder / "sub" / "b.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.mark.parametrize("suffix", [".npz", ".array_record"])
def test_tokenize_then_detokenize(tmp_path, parity_dir, parity_io, vae_json, image_folder, suffix, caplog):
    ckpt = str(parity_dir / "flextok_tiny.safetensors")
    out = tmp_path / f"tokens{suffix}"
    assert cli.main(["tokenize", "--checkpoint", ckpt, "--vae_config", str(vae_json),
                     "--images", str(image_folder), "--out", str(out), "--batch_size", "2"]) == 0
    assert "broken.png" in caplog.text  # the corrupt file is named and skipped
    names, tokens = cli.read_tokens(out)
    assert names == ["a.png", "sub/b.jpg"] and tokens.shape == (2, 16) and tokens.dtype == np.int32
    # a.png is the fixture image 0 saved losslessly (up to uint8 rounding): same tokens but a few.
    assert (tokens[0] == parity_io["token_ids"][0]).mean() >= 0.75

    out_dir = tmp_path / "png"
    assert cli.main(["detokenize", "--checkpoint", ckpt, "--vae_config", str(vae_json), "--tokens", str(out),
                     "--out_dir", str(out_dir), "--keep_k", "1", "16", "--steps", "2"]) == 0
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["a_k1.png", "a_k16.png", "sub__b_k1.png", "sub__b_k16.png"]
    assert Image.open(out_dir / "a_k16.png").size == (64, 64)

    # A k beyond the 16 tokens the file holds is clipped, said so, and the files are named by the
    # k used: 99 decodes as 16 (written once), not as "_k99".
    clipped = tmp_path / "clipped"
    caplog.clear()
    assert cli.main(["detokenize", "--checkpoint", ckpt, "--vae_config", str(vae_json), "--tokens", str(out),
                     "--out_dir", str(clipped), "--keep_k", "99", "16", "--steps", "2"]) == 0
    assert sorted(p.name for p in clipped.iterdir()) == ["a_k16.png", "sub__b_k16.png"]
    assert "requested k=99" in caplog.text and "decoding k=16" in caplog.text


def test_cli_prints_no_backend_noise(tmp_path):
    """jax's INFO line about a missing TPU backend (libtpu) is not shown to CLI users."""
    proc = subprocess.run([sys.executable, "-m", "flextok_jax.cli", "detokenize", "--checkpoint", str(tmp_path / "x"),
                           "--tokens", "t.npz", "--out_dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "x" in proc.stderr
    assert "libtpu" not in proc.stderr and "Unable to initialize backend" not in proc.stderr, proc.stderr


def test_cli_rejects_checkpoint_of_another_vae(tmp_path, parity_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.cli", "tokenize", "--checkpoint", str(parity_dir / "flextok_tiny.safetensors"),
         "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "t.npz")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    # The standard VAE does not fit the tiny checkpoint: the error names a tensor and both shapes.
    assert "vae.vae." in proc.stderr and "expected" in proc.stderr
