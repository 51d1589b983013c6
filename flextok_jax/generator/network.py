"""The generator's linen modules: a Llama-style decoder over a class prefix and FlexTok ids.

Sequence layout: position 0 holds the class embedding, position t >= 1 the embedding of token
t - 1; the output at position t is the distribution of token t. Positions carry a learned
absolute embedding (a FlexTok position has one fixed coarse-to-fine meaning).

Logical axis names of the parameters: ``embed`` (model width), ``heads`` (attention width,
heads x head_dim), ``mlp`` (SwiGLU hidden width), ``vocab`` (token ids: the token table's rows
and the head's outputs), ``classes`` (class-table rows), ``positions`` (position-table rows),
``norm`` (RMSNorm scales). Activations: ``act_batch``, ``act_seq``, ``act_embed``.

A KV cache is one (k, v) pair per layer, each [N, heads, L, head_dim] in the compute dtype:
heads-major, so a decode step's q.k and p.v contractions read each (row, head) slab of the
cache as one contiguous [L, head_dim] matrix (a [N, L, heads, head_dim] cache would be
transposed, i.e. copied, by XLA:CPU at every step).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flextok_jax.generator.config import GeneratorConfig
from flextok_jax.model.layers import SwiGLU, attention, dense

Cache = tuple[tuple[jax.Array, jax.Array], ...]
ACT_AXES = ("act_batch", "act_seq", "act_embed")
EMBED_STD = 0.02


def rms_norm(cfg: GeneratorConfig, name: str) -> nn.RMSNorm:
    """RMSNorm with a learned scale (statistics in float32, output in the compute dtype)."""
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        name=name,
    )


def cached_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array, scale: float) -> jax.Array:
    """Causal attention of queries at positions pos .. pos + n - 1 over a heads-major cache.

    q: [N, n, H, Dh]; caches [N, H, L, Dh] (keys of positions > a query's are masked out).
    Returns [N, n, H, Dh]. Logits and softmax in float32.
    """
    logits = jnp.einsum("bqhd,bhkd->bhqk", q, k_cache, preferred_element_type=jnp.float32) * scale
    query_pos = pos + jnp.arange(q.shape[1])
    visible = jnp.arange(k_cache.shape[2])[None, :] <= query_pos[:, None]  # [n, L]
    logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_cache.dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", probs, v_cache)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, no biases, optional QK RMSNorm, scale 1/sqrt(head_dim)."""

    cfg: GeneratorConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: tuple[jax.Array, jax.Array] | None = None, pos: jax.Array | int = 0
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x: [N, n, D] at positions pos .. pos + n - 1. Without a cache the n rows attend causally
        among themselves (pos must be 0); with one, their k, v are written into it at pos and
        they attend over it. Returns ([N, n, D], updated cache or None)."""
        cfg = self.cfg
        b, n, _ = x.shape
        dtype = cfg.compute_dtype

        def project(name: str) -> jax.Array:
            y = dense(cfg.attn_dim, ("embed", "heads"), name=name, dtype=dtype)(x)
            return y.reshape(b, n, cfg.num_heads, cfg.head_dim)

        q, k, v = project("wq"), project("wk"), project("wv")
        if cfg.qk_norm:
            q, k = rms_norm(cfg, "q_norm")(q), rms_norm(cfg, "k_norm")(k)
        scale = cfg.head_dim**-0.5
        if cache is None:
            causal = jnp.tril(jnp.ones((n, n), bool))
            out = attention(q, k, v, scale, causal)
        else:
            k_cache, v_cache = (
                jax.lax.dynamic_update_slice(c, new.transpose(0, 2, 1, 3).astype(c.dtype), (0, 0, pos, 0))
                for c, new in zip(cache, (k, v))
            )
            cache = (k_cache, v_cache)
            out = cached_attention(q, k_cache, v_cache, pos, scale)
        out = out.reshape(b, n, cfg.attn_dim)
        return dense(cfg.dim, ("heads", "embed"), name="wo", dtype=dtype)(out), cache


class DecoderBlock(nn.Module):
    """Pre-norm block: x += attn(norm x); x += SwiGLU(norm x)."""

    cfg: GeneratorConfig

    @nn.compact
    def __call__(self, x: jax.Array, cache: Any = None, pos: jax.Array | int = 0) -> tuple[jax.Array, Any]:
        """x: [N, n, D] -> ([N, n, D], updated cache); see ``CausalSelfAttention``."""
        cfg = self.cfg
        h, cache = CausalSelfAttention(cfg, name="attn")(rms_norm(cfg, "attn_norm")(x), cache, pos)
        x = nn.with_logical_constraint(x + h, ACT_AXES)
        h = SwiGLU(cfg.dim, cfg.mlp_dim, cfg.compute_dtype, name="mlp")(rms_norm(cfg, "mlp_norm")(x))
        return nn.with_logical_constraint(x + h, ACT_AXES), cache


class GeneratorNet(nn.Module):
    """Embeddings, ``depth`` blocks, final RMSNorm and an untied zero-initialised vocabulary head.

    Methods (via ``apply(..., method=...)``): ``__call__`` (teacher-forced logits), ``prefill``
    (the class position into a cache) and ``decode`` (one more token position).
    """

    cfg: GeneratorConfig

    def setup(self):
        cfg = self.cfg

        def table(rows: int, axis: str, name: str) -> nn.Embed:
            init = nn.with_logical_partitioning(nn.initializers.normal(EMBED_STD), (axis, "embed"))
            return nn.Embed(rows, cfg.dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32, embedding_init=init, name=name)

        self.token_embed = table(cfg.num_ids, "vocab", "token_embed")
        self.class_embed = table(cfg.num_classes + 1, "classes", "class_embed")
        self.pos_embed = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(EMBED_STD), ("positions", "embed")),
            (cfg.max_tokens, cfg.dim),
            jnp.float32,
        )
        self.blocks = [DecoderBlock(cfg, name=f"blocks_{i}") for i in range(cfg.depth)]
        self.final_norm = rms_norm(cfg, "final_norm")
        # float32 accumulation and output: logits over 64,000 ids need more than bf16's 8 bits.
        self.head = nn.Dense(
            cfg.num_ids,
            use_bias=False,
            dtype=cfg.compute_dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed", "vocab")),
            dot_general=lambda *a, **kw: jax.lax.dot_general(*a, **kw, preferred_element_type=jnp.float32),
            name="head",
        )

    def _trunk(self, x: jax.Array, cache: Cache | None, pos: jax.Array | int) -> tuple[jax.Array, Cache | None]:
        x = nn.with_logical_constraint(x, ACT_AXES)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[i], pos)
            new_cache.append(layer_cache)
        logits = self.head(self.final_norm(x)).astype(jnp.float32)
        return logits, (None if cache is None else tuple(new_cache))

    def __call__(self, labels: jax.Array, tokens: jax.Array) -> jax.Array:
        """labels int [B], tokens int [B, T] -> float32 logits [B, T, V]; logits[:, t] is the
        distribution of tokens[:, t] given the class and tokens[:, :t] (the last token is never
        an input)."""
        t = tokens.shape[1]
        x = jnp.concatenate([self.class_embed(labels)[:, None], self.token_embed(tokens[:, : t - 1])], axis=1)
        x = x + self.pos_embed[:t].astype(x.dtype)
        return self._trunk(x, None, 0)[0]

    def prefill(self, labels: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """The class position (0) of each row into an empty cache. labels [N] -> (logits [N, V]
        of token 0, cache)."""
        x = self.class_embed(labels)[:, None] + self.pos_embed[:1].astype(self.cfg.compute_dtype)
        logits, cache = self._trunk(x, cache, 0)
        return logits[:, 0], cache

    def decode(self, prev_tokens: jax.Array, pos: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """Token pos - 1 of each row (prev_tokens [N]) at position pos (>= 1) -> (logits [N, V]
        of token pos, cache with position pos written)."""
        row = jax.lax.dynamic_slice_in_dim(self.pos_embed, pos, 1).astype(self.cfg.compute_dtype)
        x = self.token_embed(prev_tokens)[:, None] + row
        logits, cache = self._trunk(x, cache, pos)
        return logits[:, 0], cache
