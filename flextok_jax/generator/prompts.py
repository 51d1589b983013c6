"""Text prompts -> the ``TextCondition`` of a text generator, via the MiniLM sentence encoder.

Conventions (also those of ``flextok generate --prompt``):

- An empty prompt ("" or only whitespace) is the null prompt: that row gets the learned null
  prefix, i.e. an unconditional sample.
- A prompt longer than the generator's text slots (``max_text_tokens``, [CLS] and [SEP]
  included) is truncated to them, with a warning; its pooled vector is then that of the
  truncated text, as in training.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from flextok_jax.generator.conditioning import TextCondition
from flextok_jax.generator.config import GeneratorConfig


def encode_prompts(encoder: Any, prompts: Sequence[str], config: GeneratorConfig) -> TextCondition:
    """prompts (B strings) -> TextCondition with L = max_text_tokens (tokens [B, L, text_dim],
    mask [B, L], pooled [B, text_dim], null [B]). ``encoder``: a ``flextok_jax.text.MiniLM``."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if config.condition != "text":
        raise ValueError("this generator is class-conditional: give labels, not prompts")
    if encoder.config.hidden_size != config.text_dim:
        raise ValueError(f"text encoder width {encoder.config.hidden_size} != the generator's text_dim {config.text_dim}")
    null = np.array([not p.strip() for p in prompts])
    limit = min(config.max_text_tokens, encoder.tokenizer.max_tokens)
    texts = [p.strip() for p in prompts]
    ids, _ = encoder.tokenizer.encode(texts, max_length=encoder.tokenizer.max_tokens)  # lengths only
    long = [i for i, row in enumerate(ids) if (row != encoder.tokenizer.pad_id).sum() > limit]
    if long:
        warnings.warn(f"{len(long)} of {len(prompts)} prompts (e.g. prompt {long[0]}: {prompts[long[0]][:40]!r}) "
                      f"exceed the generator's {limit} text tokens and were truncated", stacklevel=2)
    with warnings.catch_warnings():  # the tokenizer's own truncation warning, said once above
        warnings.simplefilter("ignore")
        feats = encoder.encode(texts, max_length=limit)
    return TextCondition(tokens=jnp.asarray(feats.tokens, jnp.float32), mask=jnp.asarray(feats.mask),
                         pooled=jnp.asarray(feats.pooled, jnp.float32), null=jnp.asarray(null))
