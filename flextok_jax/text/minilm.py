"""A post-LN BERT encoder (all-MiniLM-L6-v2 and same-layout sentence-transformers models).

Layout of one layer, as in BERT: x = LN(x + attn(x)); x = LN(x + mlp(x)), with biases on every
linear, exact-erf GELU, attention scale 1/sqrt(head_dim) and padded keys masked out. Embeddings
are word + absolute position (0..L-1) + token type, then a LayerNorm. Parameter names follow our
layers (``kernel`` [in, out]); ``weights.py`` maps the torch state dict onto them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flextok_jax.model.layers import attention, dense
from flextok_jax.text.config import BertConfig

Dtype = Any

# BERT's initializer_range; only used for fresh (untrained) parameters.
_INIT_STD = 0.02


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # The two-pass variance: with eps 1e-12 the one-pass E[x^2] - E[x]^2 form loses digits.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


def _table(module: nn.Module, name: str, rows: int, dim: int, axes: tuple[str, str]) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)
    return module.param(name, init, (rows, dim), jnp.float32)


class BertEmbeddings(nn.Module):
    """LN(word[ids] + position[0..L-1] + token_type[type_ids]) -> [B, L, D]."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        """input_ids, token_type_ids: int [B, L] -> [B, L, D]."""
        c = self.config
        length = input_ids.shape[1]
        if length > c.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings {c.max_position_embeddings}")
        word = _table(self, "word", c.vocab_size, c.hidden_size, ("vocab", "embed"))
        position = _table(self, "position", c.max_position_embeddings, c.hidden_size, ("positions", "embed"))
        token_type = _table(self, "token_type", c.type_vocab_size, c.hidden_size, ("token_types", "embed"))
        x = jnp.take(word, input_ids, axis=0) + position[None, :length] + jnp.take(token_type, token_type_ids, axis=0)
        return _layer_norm(c, "norm")(x).astype(self.dtype)


class BertLayer(nn.Module):
    """One post-LN encoder layer: x = LN(x + attn(x)); x = LN(x + fc2(gelu(fc1 x)))."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """x: [B, L, D]; key_mask: bool [B, L] (True = real token). Returns [B, L, D]."""
        c = self.config
        b, n, _ = x.shape

        def project(name: str) -> jax.Array:
            y = dense(c.hidden_size, ("embed", "heads"), name=name, use_bias=True, dtype=self.dtype)(x)
            return y.reshape(b, n, c.num_attention_heads, c.head_dim)

        q, k, v = project("query"), project("key"), project("value")
        out = attention(q, k, v, c.head_dim**-0.5, key_mask[:, None, None, :]).reshape(b, n, c.hidden_size)
        out = dense(c.hidden_size, ("heads", "embed"), name="attn_out", use_bias=True, dtype=self.dtype)(out)
        x = _layer_norm(c, "attn_norm")(x + out).astype(self.dtype)
        h = dense(c.intermediate_size, ("embed", "mlp"), name="fc1", use_bias=True, dtype=self.dtype)(x)
        h = dense(c.hidden_size, ("mlp", "embed"), name="fc2", use_bias=True, dtype=self.dtype)(
            nn.gelu(h, approximate=False)
        )
        return _layer_norm(c, "mlp_norm")(x + h).astype(self.dtype)


class BertModel(nn.Module):
    """BERT encoder without the pooler: token ids -> last hidden state [B, L, D]."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, mask: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
        """input_ids: int [B, L]; mask: [B, L], nonzero = real token; token_type_ids: int [B, L]
        (default all 0). Returns the last hidden state [B, L, hidden_size]; rows at padded
        positions are computed (they attend to the real tokens) but carry no meaning."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        key_mask = mask.astype(bool)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(input_ids, token_type_ids)
        for i in range(self.config.num_hidden_layers):
            x = nn.with_logical_constraint(x, ("act_batch", "act_seq", "act_embed"))
            x = BertLayer(self.config, self.dtype, name=f"layers_{i}")(x, key_mask)
        return x


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``hidden`` [B, L, D] over the positions where ``mask`` [B, L] is nonzero -> [B, D].

    As sentence-transformers' Pooling(mean): sum(h * m) / max(sum(m), 1e-9), in float32.
    """
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||_2, eps) over the last axis, as torch's F.normalize."""
    norm = jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)
