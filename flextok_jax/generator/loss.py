"""Next-token cross-entropy of the generator, with condition dropout for classifier-free guidance."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from flextok_jax.generator.conditioning import drop_condition, prepare_condition


def position_bands(num_positions: int) -> list[tuple[int, int]]:
    """1-based inclusive position bands 1, 2-4, 5-16, 17-64, 65-256, ... (powers of 4) that
    start at or before ``num_positions`` (the last may reach beyond it)."""
    bands, lo, hi = [], 1, 1
    while lo <= num_positions:
        bands.append((lo, hi))
        lo, hi = hi + 1, hi * 4
    return bands


def band_name(lo: int, hi: int) -> str:
    """Metric name of the band [lo, hi]: 'loss/pos_001', 'loss/pos_002-004', ..."""
    return f"loss/pos_{lo:03d}" if lo == hi else f"loss/pos_{lo:03d}-{hi:03d}"


def drop_labels(labels: jax.Array, rng: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Each label independently becomes ``null_label`` with probability ``rate``. [B] -> [B]."""
    drop = jax.random.bernoulli(rng, rate, labels.shape)
    return jnp.where(drop, null_label, labels).astype(jnp.int32)


def eos_targets(tokens: jax.Array, lengths: jax.Array, eos_id: int) -> tuple[jax.Array, jax.Array]:
    """Training sequences that end with EOS: tokens int [B, T], lengths int [B] in [1, T] ->
    (tokens int32 [B, T], weights float32 [B, T]).

    Row b keeps tokens[b, :L] (L = lengths[b]); position L holds ``eos_id`` where L < T (at
    L = T the image uses every position and sampling stops there without EOS). Weights are 1 on
    positions <= L (< T) and 0 after; positions after the EOS hold ``eos_id`` too (any valid
    input id would do: they are weighted 0 and, by causality, reach no weighted position).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)[:, None]
    pos = jnp.arange(tokens.shape[1])[None, :]
    out = jnp.where(pos < lengths, tokens, eos_id)
    return out, (pos <= lengths).astype(jnp.float32)


def next_token_loss(
    gen: Any,
    params: Any,
    cond: Any,
    tokens: jax.Array,
    rng: jax.Array,
    class_dropout: float = 0.1,
    weights: jax.Array | None = None,
    lengths: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy: cond (labels int32 [B], or a text condition of B rows),
    tokens int32 [B, T] -> (scalar float32 loss, metrics of float32 scalars).

    With probability ``class_dropout`` an image's condition becomes the null one (the null
    class row, or the learned null text prefix; ``rng`` draws it).
    ``weights`` float [B, T] (e.g. a 0/1 mask for variable-length sequences) weights each
    position's loss; the mean is then sum(w * ce) / sum(w). Metrics: ``loss``, ``accuracy``
    (argmax == target, same weighting), ``null_label_fraction`` (rows whose condition is the null one after dropout) and
    ``loss/pos_...`` per band of positions (``position_bands``).
    ``lengths`` int [B] in [1, T] (a model with ``config.eos``): image b is its first lengths[b]
    tokens followed by EOS (``eos_targets``); its 0/1 mask multiplies ``weights``.
    """
    if lengths is not None:
        tokens, length_weights = eos_targets(tokens, lengths, gen.config.eos_id)
        weights = length_weights if weights is None else length_weights * jnp.asarray(weights, jnp.float32)
    cond, is_null = drop_condition(gen.config, prepare_condition(gen.config, cond), rng, class_dropout)
    logits = gen.logits(params, cond, tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, T] float32
    correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
    w = jnp.ones(ce.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)

    def mean(x: jax.Array, w_: jax.Array) -> jax.Array:
        return jnp.sum(x * w_) / jnp.maximum(jnp.sum(w_), 1e-12)

    loss = mean(ce, w)
    metrics = {
        "loss": loss,
        "accuracy": mean(correct, w),
        "null_label_fraction": jnp.mean(is_null.astype(jnp.float32)),
    }
    for lo, hi in position_bands(tokens.shape[1]):  # a band cut short by T averages what it has
        metrics[band_name(lo, hi)] = mean(ce[:, lo - 1 : hi], w[:, lo - 1 : hi])
    return loss, metrics
