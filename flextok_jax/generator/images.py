"""Conditions (class labels or text) -> images: sample FlexTok ids with the generator, decode
them with the tokenizer."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.generator.checks import check_num_tokens
from flextok_jax.generator.conditioning import condition_batch
from flextok_jax.generator.sampler import PAD_TOKEN


def check_tokenizer(gen: Any, tokenizer: Any) -> None:
    """The generator models this tokenizer's ids: same vocabulary, no more tokens than registers."""
    tcfg = tokenizer.config
    if gen.config.vocab_size != tcfg.vocab_size:
        raise ValueError(f"generator vocab_size {gen.config.vocab_size} != tokenizer vocab_size {tcfg.vocab_size}")
    if gen.config.max_tokens > tcfg.n_registers:
        raise ValueError(f"generator max_tokens {gen.config.max_tokens} > tokenizer n_registers {tcfg.n_registers}")


def generate_images(
    gen: Any,
    params: Any,
    tokenizer: Any,
    tok_params: Any,
    cond: Any,
    num_tokens: Any,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    guidance_schedule: str = "constant",
    num_steps: int = 25,
    guidance_scale: float = 1.0,
    decode_rng: jax.Array | None = None,
    return_num_tokens: bool = False,
    **detokenize_kwargs: Any,
) -> Any:
    """cond (labels int [B], or a text condition of B rows) -> float32 images [B, H, W, 3] (the
    tokenizer's range, not clipped); with ``return_num_tokens`` (images, int32 [B] the tokens
    each image was decoded from).

    ``num_tokens``: one int or an int array [B] (image b is decoded from its first k[b] ids),
    or None for a generator with EOS (each image decoded at the length it stopped at).
    The sampling arguments go to ``gen.generate``; ``num_steps``, ``guidance_scale``,
    ``decode_rng`` (the flow's start noise) and ``detokenize_kwargs`` to ``tokenizer.detokenize``
    (a ``flextok_jax.FlexTok``).
    """
    check_tokenizer(gen, tokenizer)
    if num_tokens is None:
        tokens, ks = gen.generate(params, cond, None, cfg_scale, temperature, top_k, top_p, rng, guidance_schedule)
        ks = np.asarray(ks)
    else:
        ks = check_num_tokens(gen.config, num_tokens, condition_batch(gen.config, cond))
        tokens = gen.generate(params, cond, num_tokens, cfg_scale, temperature, top_k, top_p, rng, guidance_schedule)
    # Pads sit at positions >= k, which keep_k masks out; any valid id stands in for them.
    tokens = np.where(np.asarray(tokens) == PAD_TOKEN, 0, np.asarray(tokens))
    images = tokenizer.detokenize(
        tok_params, tokens, keep_k=ks, num_steps=num_steps, guidance_scale=guidance_scale, rng=decode_rng,
        **detokenize_kwargs,
    )
    images = jnp.asarray(images, jnp.float32)
    return (images, np.asarray(ks, np.int32)) if return_num_tokens else images


def generate_images_by_k(
    gen: Any,
    params: Any,
    tokenizer: Any,
    tok_params: Any,
    cond: Any,
    ks: Sequence[int],
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    num_steps: int = 25,
    guidance_scale: float = 1.0,
    decode_rng: jax.Array | None = None,
    **detokenize_kwargs: Any,
) -> np.ndarray:
    """cond (B rows) -> float32 images [len(ks), B, H, W, 3]: row i decoded from the first ks[i]
    ids of ONE generation of max(ks) tokens, from the same start noise (``decode_rng``) for every k.

    Equal to ``generate_images(..., num_tokens=k, rng=rng)`` for each k at a fraction of the cost:
    position t is drawn with the key of position t from the logits of the tokens before it, and the
    guidance scale is constant, so a k-token sample is the prefix of a longer one.
    """
    check_tokenizer(gen, tokenizer)
    ks = [int(k) for k in ks]
    b = condition_batch(gen.config, cond)
    longest = int(max(check_num_tokens(gen.config, k, b).max() for k in ks))
    tokens = np.asarray(gen.generate(params, cond, longest, cfg_scale, temperature, top_k, top_p, rng))
    out = [tokenizer.detokenize(tok_params, tokens, keep_k=k, num_steps=num_steps, guidance_scale=guidance_scale,
                                rng=decode_rng, **detokenize_kwargs) for k in ks]
    return np.stack([np.asarray(x, np.float32) for x in out])
