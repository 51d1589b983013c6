"""Generator parameter files (round trip, shape validation) and the errors for bad inputs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from flextok_jax import generator
from flextok_jax.benchmarks.models import random_params

VOCAB = 16


@pytest.fixture(scope="module")
def tiny():
    gen = generator.Generator(generator.preset("tiny", vocab_size=VOCAB, qk_norm=False))
    return gen, random_params(gen, seed=0)


def test_save_load_round_trip(tiny, tmp_path):
    gen, params = tiny
    path = tmp_path / "gen.safetensors"
    generator.save_params(path, params, gen.config)
    loaded_gen, loaded = generator.load_generator(path)
    assert loaded_gen.config == gen.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(params))
    labels, tokens = jnp.array([1, 10]), jnp.zeros((2, 4), jnp.int32)
    np.testing.assert_array_equal(loaded_gen.logits(loaded, labels, tokens), gen.logits(params, labels, tokens))


def test_load_rejects_a_mis_shaped_or_missing_tensor(tiny, tmp_path):
    gen, params = tiny
    path = tmp_path / "gen.safetensors"
    generator.save_params(path, params, gen.config)
    meta = {"format": "flextok_jax/generator/1", "config": json.dumps(gen.config.to_dict())}
    flat = load_file(path)
    bad = dict(flat, **{"blocks_1/mlp/fc2/kernel": np.zeros((3, 64), np.float32)})
    save_file(bad, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"'blocks_1/mlp/fc2/kernel' has shape \(3, 64\), expected \(170, 64\)"):
        generator.load_generator(tmp_path / "bad.safetensors")
    del flat["pos_embed"]
    save_file(flat, tmp_path / "missing.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"'pos_embed' has shape None, expected \(16, 64\)"):
        generator.load_generator(tmp_path / "missing.safetensors")
    save_file(flat, tmp_path / "other.safetensors", metadata={"format": "flextok_jax/1"})
    with pytest.raises(ValueError, match="metadata format is 'flextok_jax/1'"):
        generator.load_generator(tmp_path / "other.safetensors")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=[0, 11]), r"labels must lie in \[0, 10\] .* got \[11\]"),
        (dict(labels=[-1, 3]), r"labels must lie in \[0, 10\] .* got \[-1\]"),
        (dict(num_tokens=0), r"num_tokens must lie in \[1, 16\] \(max_tokens\), got \[0\]"),
        (dict(num_tokens=np.array([3, 17])), r"num_tokens must lie in \[1, 16\] \(max_tokens\), got \[17\]"),
        (dict(num_tokens=np.array([3, 4, 5])), r"shape \[2\], got shape \(3,\)"),
        (dict(cfg_scale=-0.5), r"cfg_scale must be >= 0, got -0.5"),
        (dict(temperature=-1.0), r"temperature must be >= 0 \(0 = greedy\), got -1.0"),
        (dict(top_k=-2), r"top_k must be an int >= 0 .*, got -2"),
        (dict(top_p=0.0), r"top_p must lie in \(0, 1\] .*, got 0.0"),
        (dict(top_p=1.5), r"top_p must lie in \(0, 1\] .*, got 1.5"),
        (dict(guidance_schedule="cosine"), r"guidance_schedule must be one of \('constant', 'linear'\), got 'cosine'"),
    ],
)
def test_generate_rejects_bad_inputs(tiny, kwargs, message):
    gen, params = tiny
    args = dict(labels=[0, 1], num_tokens=4)
    args.update(kwargs)
    labels = np.asarray(args.pop("labels"), np.int32)
    with pytest.raises((ValueError, TypeError), match=message):
        gen.generate(params, labels, **args)


@pytest.mark.parametrize(
    "labels, tokens, message",
    [
        ([0, 11], np.zeros((2, 4)), r"labels must lie in \[0, 10\] .* got \[11\]"),
        ([0, 1], np.array([[0, 16, 2], [1, 2, -1]]), r"token ids must lie in \[0, 16\) \(vocab_size\), got \[-1, 16\]"),
        ([0, 1], np.zeros((2, 17)), r"tokens has 17 positions per image; expected 1..16 \(max_tokens\)"),
        ([0, 1], np.zeros((3, 4)), r"tokens has batch 3 but labels has 2"),
        ([0, 1], np.zeros((2, 4), np.float32), r"tokens must be an int array \[B, T\], got shape \(2, 4\) dtype float32"),
    ],
)
def test_logits_rejects_bad_inputs(tiny, labels, tokens, message):
    gen, params = tiny
    tokens = tokens if tokens.dtype == np.float32 else tokens.astype(np.int32)
    with pytest.raises(ValueError, match=message):
        gen.logits(params, np.asarray(labels, np.int32), tokens)
