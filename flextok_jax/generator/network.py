"""The generator's linen modules: a Llama-style decoder over a condition prefix and FlexTok ids.

Sequence layout of a class model: position 0 holds the class embedding, position t >= 1 the
embedding of token t - 1; the output at position t is the distribution of token t. Positions
carry a learned absolute embedding (a FlexTok position has one fixed coarse-to-fine meaning).

A text model puts O = ``max_text_tokens`` text slots first: slot j (0 <= j < O) holds the
projected per-token feature j of the prompt (``text_proj``) plus ``text_pos_embed[j]``; then the
class layout follows, shifted by O: position O holds the projected pooled vector
(``pooled_proj``) and position O + t the embedding of token t - 1. The output at O + t is the
distribution of token t, so token 0 is always predicted from a real position (the pooled one),
whatever the prompt's length. Padding slots (mask 0) are never attended to: every query's
keys are masked there, in the teacher-forced forward and in the KV cache alike, and their
inputs are zeroed before the projection, so neither the pad contents nor the number of pads
change any logit. A null row (classifier-free guidance) has every text slot masked and the
learned ``null_embed`` in place of the pooled projection.

Logical axis names of the parameters: ``embed`` (model width), ``heads`` (attention width,
heads x head_dim), ``mlp`` (SwiGLU hidden width), ``vocab`` (token ids: the token table's rows
and the head's outputs), ``classes`` (class-table rows), ``positions`` (position-table rows),
``norm`` (RMSNorm scales), ``text_embed`` (the text encoder's width: the projections' inputs),
``text_positions`` (text-slot position rows). Activations: ``act_batch``, ``act_seq``, ``act_embed``.

A KV cache is one (k, v) pair per layer, each [N, heads, L, head_dim] in the compute dtype:
heads-major, so a decode step's q.k and p.v contractions read each (row, head) slab of the
cache as one contiguous [L, head_dim] matrix (a [N, L, heads, head_dim] cache would be
transposed, i.e. copied, by XLA:CPU at every step). A text model's cache is a ``TextCache``:
those layers plus the key mask [N, L] (False at the prompt's padding slots).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from flextok_jax.generator.conditioning import TextCondition
from flextok_jax.generator.config import GeneratorConfig
from flextok_jax.model.layers import RowDense, SwiGLU, attention, dense

Cache = tuple[tuple[jax.Array, jax.Array], ...]
ACT_AXES = ("act_batch", "act_seq", "act_embed")
EMBED_STD = 0.02


@struct.dataclass
class TextCache:
    """A text model's KV cache: ``layers`` (per layer (k, v), [N, heads, L, head_dim]) and
    ``key_mask`` bool [N, L] (False at padding slots of the prompt; written by prefill)."""

    layers: Cache
    key_mask: jax.Array


def rms_norm(cfg: GeneratorConfig, name: str) -> nn.RMSNorm:
    """RMSNorm with a learned scale (statistics in float32, output in the compute dtype)."""
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        name=name,
    )


def cached_attention(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array, scale: float,
    key_mask: jax.Array | None = None,
) -> jax.Array:
    """Causal attention of queries at positions pos .. pos + n - 1 over a heads-major cache.

    q: [N, n, H, Dh]; caches [N, H, L, Dh] (keys of positions > a query's are masked out, and
    so are keys where ``key_mask`` bool [N, L] is False). Returns [N, n, H, Dh]. Logits and
    softmax in float32.
    """
    logits = jnp.einsum("bqhd,bhkd->bhqk", q, k_cache, preferred_element_type=jnp.float32) * scale
    query_pos = pos + jnp.arange(q.shape[1])
    visible = jnp.arange(k_cache.shape[2])[None, :] <= query_pos[:, None]  # [n, L]
    if key_mask is not None:
        visible = visible[None, None] & key_mask[:, None, None, :]  # [N, 1, n, L]
    logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_cache.dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", probs, v_cache)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, no biases, optional QK RMSNorm, scale 1/sqrt(head_dim)."""

    cfg: GeneratorConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: tuple[jax.Array, jax.Array] | None = None, pos: jax.Array | int = 0,
        key_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x: [N, n, D] at positions pos .. pos + n - 1. Without a cache the n rows attend causally
        among themselves (pos must be 0); with one, their k, v are written into it at pos and
        they attend over it. ``key_mask`` bool [N, n] (no cache) or [N, L] (the cache's length):
        False hides that key from every query. Returns ([N, n, D], updated cache or None)."""
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
            if key_mask is not None:
                causal = causal[None, None] & key_mask[:, None, None, :]  # [N, 1, n, n]
            out = attention(q, k, v, scale, causal)
        else:
            k_cache, v_cache = (
                jax.lax.dynamic_update_slice(c, new.transpose(0, 2, 1, 3).astype(c.dtype), (0, 0, pos, 0))
                for c, new in zip(cache, (k, v))
            )
            cache = (k_cache, v_cache)
            out = cached_attention(q, k_cache, v_cache, pos, scale, key_mask)
        out = out.reshape(b, n, cfg.attn_dim)
        return dense(cfg.dim, ("heads", "embed"), name="wo", dtype=dtype)(out), cache


class DecoderBlock(nn.Module):
    """Pre-norm block: x += attn(norm x); x += SwiGLU(norm x)."""

    cfg: GeneratorConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: Any = None, pos: jax.Array | int = 0, key_mask: jax.Array | None = None
    ) -> tuple[jax.Array, Any]:
        """x: [N, n, D] -> ([N, n, D], updated cache); see ``CausalSelfAttention``."""
        cfg = self.cfg
        h, cache = CausalSelfAttention(cfg, name="attn")(rms_norm(cfg, "attn_norm")(x), cache, pos, key_mask)
        x = nn.with_logical_constraint(x + h, ACT_AXES)
        h = SwiGLU(cfg.dim, cfg.mlp_dim, cfg.compute_dtype, name="mlp")(rms_norm(cfg, "mlp_norm")(x))
        return nn.with_logical_constraint(x + h, ACT_AXES), cache


class GeneratorNet(nn.Module):
    """Embeddings, ``depth`` blocks, final RMSNorm and an untied zero-initialised vocabulary head.

    Methods (via ``apply(..., method=...)``): ``__call__`` (teacher-forced logits), ``prefill``
    (the condition prefix into a cache) and ``decode`` (one more token position). ``cond`` is
    int labels [B] for a class model, a canonical ``TextCondition`` (``conditioning``) for a text
    model.
    """

    cfg: GeneratorConfig

    def setup(self):
        cfg = self.cfg

        def table(rows: int, axis: str, name: str) -> nn.Embed:
            init = nn.with_logical_partitioning(nn.initializers.normal(EMBED_STD), (axis, "embed"))
            return nn.Embed(rows, cfg.dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32, embedding_init=init, name=name)

        def rows(name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> jax.Array:
            init = nn.with_logical_partitioning(nn.initializers.normal(EMBED_STD), axes)
            return self.param(name, init, shape, jnp.float32)

        self.token_embed = table(cfg.num_ids, "vocab", "token_embed")
        if cfg.condition == "class":
            self.class_embed = table(cfg.num_classes + 1, "classes", "class_embed")
        else:
            # Only text models create these, so a class model's parameter tree is unchanged.
            self.text_proj = dense(cfg.dim, ("text_embed", "embed"), name="text_proj", dtype=cfg.compute_dtype)
            self.pooled_proj = dense(cfg.dim, ("text_embed", "embed"), name="pooled_proj", dtype=cfg.compute_dtype)
            self.null_embed = rows("null_embed", (cfg.dim,), ("embed",))
            self.text_pos_embed = rows("text_pos_embed", (cfg.max_text_tokens, cfg.dim), ("text_positions", "embed"))
        self.pos_embed = rows("pos_embed", (cfg.max_tokens, cfg.dim), ("positions", "embed"))
        self.blocks = [DecoderBlock(cfg, name=f"blocks_{i}") for i in range(cfg.depth)]
        self.final_norm = rms_norm(cfg, "final_norm")
        # float32 accumulation and output: logits over 64,000 ids need more than bf16's 8 bits.
        self.head = RowDense(
            cfg.num_ids,
            use_bias=False,
            dtype=cfg.compute_dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed", "vocab")),
            dot_general=lambda *a, **kw: jax.lax.dot_general(*a, **kw, preferred_element_type=jnp.float32),
            name="head",
        )

    def _trunk(
        self, x: jax.Array, cache: Cache | None, pos: jax.Array | int, key_mask: jax.Array | None = None
    ) -> tuple[jax.Array, Cache | None]:
        x = nn.with_logical_constraint(x, ACT_AXES)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[i], pos, key_mask)
            new_cache.append(layer_cache)
        logits = self.head(self.final_norm(x)).astype(jnp.float32)
        return logits, (None if cache is None else tuple(new_cache))

    def _text_prefix(self, cond: TextCondition) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(text slots [N, O, D] with their position rows, pooled row [N, 1, D] without its
        position row, slot visibility bool [N, O])."""
        dtype = self.cfg.compute_dtype
        visible = cond.mask & ~cond.null[:, None]
        # Zeroed before the projection: padding rows of an encoder's output are arbitrary.
        feats = jnp.where(visible[..., None], cond.tokens, 0.0).astype(dtype)
        slots = self.text_proj(feats) + self.text_pos_embed.astype(dtype)
        pooled = jnp.where(cond.null[:, None], self.null_embed.astype(dtype), self.pooled_proj(cond.pooled.astype(dtype)))
        return slots, pooled[:, None], visible

    def __call__(self, cond: Any, tokens: jax.Array) -> jax.Array:
        """cond (labels int [B] or TextCondition), tokens int [B, T] -> float32 logits [B, T, V];
        logits[:, t] is the distribution of tokens[:, t] given the condition and tokens[:, :t]
        (the last token is never an input)."""
        t = tokens.shape[1]
        if self.cfg.condition == "class":
            x = jnp.concatenate([self.class_embed(cond)[:, None], self.token_embed(tokens[:, : t - 1])], axis=1)
            x = x + self.pos_embed[:t].astype(x.dtype)
            return self._trunk(x, None, 0)[0]
        slots, pooled, visible = self._text_prefix(cond)
        x = jnp.concatenate([pooled, self.token_embed(tokens[:, : t - 1])], axis=1)
        x = jnp.concatenate([slots, x + self.pos_embed[:t].astype(x.dtype)], axis=1)
        key_mask = jnp.concatenate([visible, jnp.ones((tokens.shape[0], t), bool)], axis=1)
        return self._trunk(x, None, 0, key_mask)[0][:, self.cfg.prefix_offset :]

    def prefill(self, cond: Any, cache: Cache | TextCache) -> tuple[jax.Array, Cache | TextCache]:
        """The condition prefix of each row into an empty cache (a class model: the class at
        position 0; a text model: slots 0 .. O - 1 and the pooled row at O, and the key mask).
        -> (logits [N, V] of token 0, cache)."""
        dtype = self.cfg.compute_dtype
        if self.cfg.condition == "class":
            x = self.class_embed(cond)[:, None] + self.pos_embed[:1].astype(dtype)
            logits, cache = self._trunk(x, cache, 0)
            return logits[:, 0], cache
        slots, pooled, visible = self._text_prefix(cond)
        x = jnp.concatenate([slots, pooled + self.pos_embed[:1].astype(dtype)], axis=1)
        rest = cache.key_mask.shape[1] - visible.shape[1]
        key_mask = jnp.concatenate([visible, jnp.ones((visible.shape[0], rest), bool)], axis=1)
        logits, layers = self._trunk(x, cache.layers, 0, key_mask)
        return logits[:, -1], TextCache(layers=layers, key_mask=key_mask)

    def decode(self, prev_tokens: jax.Array, pos: jax.Array, cache: Cache | TextCache) -> tuple[jax.Array, Any]:
        """Token pos - 1 of each row (prev_tokens [N]) at token position pos (>= 1; sequence
        position O + pos) -> (logits [N, V] of token pos, cache with that position written)."""
        row = jax.lax.dynamic_slice_in_dim(self.pos_embed, pos, 1).astype(self.cfg.compute_dtype)
        x = self.token_embed(prev_tokens)[:, None] + row
        if self.cfg.condition == "class":
            logits, cache = self._trunk(x, cache, pos)
            return logits[:, 0], cache
        logits, layers = self._trunk(x, cache.layers, pos + self.cfg.prefix_offset, cache.key_mask)
        return logits[:, 0], cache.replace(layers=layers)
