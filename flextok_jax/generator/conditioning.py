"""What a generator is conditioned on: class labels, or a ``TextCondition`` for text models.

A text condition is the output of a sentence encoder (``flextok_jax.text.MiniLM.encode`` gives a
``TextFeatures`` with the same three arrays) plus a per-row ``null`` flag that swaps in the
learned null prefix (classifier-free guidance and its training dropout):

    tokens  float [B, L, text_dim]  per-token features (rows where mask == 0 are ignored)
    mask    int or bool [B, L]      nonzero = a real text token, 0 = padding
    pooled  float [B, text_dim]     the sentence vector
    null    bool [B]                True = this row uses the null prefix (its text is ignored)

``prepare_condition`` brings either kind to the canonical arrays the network takes: int32 labels
[B], or a ``TextCondition`` with L = ``max_text_tokens`` exactly (shorter inputs are padded,
longer ones must be padding past ``max_text_tokens``), float32 features and bool mask / null.
One L per model means one compiled program whatever the prompts' lengths.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flextok_jax.generator.checks import check_labels, is_concrete
from flextok_jax.generator.config import GeneratorConfig


@struct.dataclass
class TextCondition:
    """Text prefix of a text-conditional generator; shapes in the module docstring."""

    tokens: jax.Array
    mask: jax.Array
    pooled: jax.Array
    null: jax.Array

    @classmethod
    def from_features(cls, features: Any, null: Any = None) -> "TextCondition":
        """Any object with ``tokens``, ``mask``, ``pooled`` (e.g. ``text.TextFeatures``); ``null``
        bool [B] (default: all False, or the object's own ``null``)."""
        if null is None:
            null = getattr(features, "null", None)
        if null is None:
            null = jnp.zeros((np.shape(features.pooled)[0],), bool)
        return cls(tokens=features.tokens, mask=features.mask, pooled=features.pooled, null=jnp.asarray(null, bool))

    @classmethod
    def null_prompts(cls, batch: int, config: GeneratorConfig) -> "TextCondition":
        """``batch`` rows of the null prefix (no text): the unconditional prompt."""
        return cls(
            tokens=jnp.zeros((batch, config.max_text_tokens, config.text_dim), jnp.float32),
            mask=jnp.zeros((batch, config.max_text_tokens), bool),
            pooled=jnp.zeros((batch, config.text_dim), jnp.float32),
            null=jnp.ones((batch,), bool),
        )

    def with_null(self, null: jax.Array) -> "TextCondition":
        """The same rows with ``null`` bool [B] replacing the flags."""
        return self.replace(null=jnp.asarray(null, bool))

    def rows(self, index: Any) -> "TextCondition":
        """A subset of rows (e.g. ``cond.rows(slice(b, b + 1))``)."""
        return jax.tree.map(lambda a: a[index], self)


def condition_batch(config: GeneratorConfig, cond: Any) -> int:
    """The batch size B of ``cond`` after validating it for ``config`` (kind, shapes, values
    where concrete)."""
    if config.condition == "class":
        if hasattr(cond, "pooled"):
            raise TypeError("this generator is class-conditional: pass int labels [B], not text features")
        check_labels(config, cond)
        return len(cond)
    if not all(hasattr(cond, a) for a in ("tokens", "mask", "pooled")):
        raise TypeError(
            f"this generator is text-conditional: pass a TextCondition (or text.TextFeatures) with tokens "
            f"[B, L, {config.text_dim}], mask [B, L], pooled [B, {config.text_dim}]; got {type(cond).__name__}"
        )
    t_shape, m_shape, p_shape = np.shape(cond.tokens), np.shape(cond.mask), np.shape(cond.pooled)
    if len(t_shape) != 3 or t_shape[2] != config.text_dim or m_shape != t_shape[:2] or p_shape != (t_shape[0], config.text_dim):
        raise ValueError(
            f"text condition shapes must be tokens [B, L, {config.text_dim}], mask [B, L], pooled "
            f"[B, {config.text_dim}]; got tokens {t_shape}, mask {m_shape}, pooled {p_shape}"
        )
    null = getattr(cond, "null", None)
    if null is not None and np.shape(null) != (t_shape[0],):
        raise ValueError(f"text condition null must be bool [B={t_shape[0]}], got shape {np.shape(null)}")
    if t_shape[1] > config.max_text_tokens and is_concrete(cond.mask):
        extra = np.asarray(cond.mask)[:, config.max_text_tokens :]
        if extra.any():
            longest = int(np.asarray(cond.mask).astype(bool).sum(axis=1).max())
            raise ValueError(
                f"a prompt has {longest} text tokens but the generator's prefix holds max_text_tokens="
                f"{config.max_text_tokens}; truncate the prompts (e.g. MiniLM.encode(texts, max_length=...))"
            )
    return t_shape[0]


def prepare_condition(config: GeneratorConfig, cond: Any) -> Any:
    """The canonical form of a validated ``cond`` (module docstring): int32 labels [B] or a
    ``TextCondition`` with L = max_text_tokens."""
    if config.condition == "class":
        return jnp.asarray(cond, jnp.int32)
    cond = TextCondition.from_features(cond)
    n = config.max_text_tokens
    tokens, mask = jnp.asarray(cond.tokens, jnp.float32), jnp.asarray(cond.mask).astype(bool)
    length = tokens.shape[1]
    if length > n:  # only padding lies past n (checked in condition_batch when concrete)
        tokens, mask = tokens[:, :n], mask[:, :n]
    elif length < n:
        tokens = jnp.pad(tokens, ((0, 0), (0, n - length), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, n - length)))
    return TextCondition(tokens=tokens, mask=mask, pooled=jnp.asarray(cond.pooled, jnp.float32),
                         null=jnp.asarray(cond.null, bool))


def null_condition(config: GeneratorConfig, cond: Any) -> Any:
    """The unconditional counterpart of a canonical ``cond``, row for row: the null class label,
    or the same text rows flagged null (their features are then ignored)."""
    if config.condition == "class":
        return jnp.full_like(cond, config.null_label)
    return cond.with_null(jnp.ones_like(cond.null))


def concat_conditions(a: Any, b: Any) -> Any:
    """Rows of ``a`` then rows of ``b`` (both canonical, same kind)."""
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def drop_condition(config: GeneratorConfig, cond: Any, rng: jax.Array, rate: float) -> tuple[Any, jax.Array]:
    """Each row independently becomes the null condition with probability ``rate`` (classifier-free
    guidance training). Canonical cond -> (cond, bool [B] which rows are null now)."""
    if config.condition == "class":
        drop = jax.random.bernoulli(rng, rate, cond.shape)
        labels = jnp.where(drop, config.null_label, cond).astype(jnp.int32)
        return labels, labels == config.null_label
    null = cond.null | jax.random.bernoulli(rng, rate, cond.null.shape)
    return cond.with_null(null), null
