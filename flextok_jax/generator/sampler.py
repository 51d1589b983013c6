"""Sampling token ids from a ``Generator``: one compiled program per (batch, max_k, mode).

The cached program prefills the condition prefix into a static KV cache ([2B or B, heads,
L, head_dim] per layer; see ``network``) and runs every further position inside
``lax.fori_loop``s, one per segment of ``cache_chunk`` positions: segment [start, end) carries a
cache of L = O + end positions (O = ``config.prefix_offset``: 0 for a class model,
``max_text_tokens`` for a text model), grown by zeros between segments, so a step reads no more
of the cache than about one chunk beyond what it attends to. The cache is part of the loop
state, so XLA writes each new position in place. With ``num_tokens=None`` (a generator with
EOS) the loops are ``lax.while_loop``s that end once every image of the batch has drawn EOS, or
at max_tokens. Classifier-free guidance doubles the batch (rows B..2B-1 carry the null class, or
the null text prefix) and combines the two halves as u + s (c - u) in float32 inside the
program; sampling until EOS, the stop probability stays the conditional pass's
(``stop_as_conditioned``).

Randomness: image b draws position i with ``fold_in(keys[b], i)``, where ``keys`` is
``jax.random.split(rng, B)`` for a single key ``rng`` or ``rng`` itself when it is a key
array [B]. An image's tokens therefore depend only on its own key, label and k, never on the
rest of the batch: ``generate(labels[b:b+1], num_tokens=k[b], rng=keys[b:b+1])`` gives row b
of a batched call (``cond.rows(slice(b, b + 1))`` for a text condition).

Compilation is keyed on shapes and modes only: (batch, max_k, guidance on/off, filtering
on/off, guidance schedule, return_logits, cache_chunk). cfg_scale, temperature, top_k and top_p
are traced values, so changing them reuses the program (turning filtering on, i.e. top_k > 0 or
top_p < 1, selects the variant that sorts the logits).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.generator.checks import check_cache_chunk, check_num_tokens, check_sampling
from flextok_jax.generator.conditioning import concat_conditions, condition_batch, null_condition, prepare_condition

# Written at positions >= k of an image whose k is below the batch's largest (or that ended
# with EOS before the batch's longest).
PAD_TOKEN = -1
SCHEDULES = ("constant", "linear")
# Decode positions per cache segment (``cache_segments``). A decode step reads all of the cache
# it attends over, so a cache only as long as the segment's last position needs saves the
# reads of the positions not yet written: at d12, 128 rows, one layer's attention takes 1.4 ms
# over 33 positions and 13.1 ms over 257. Each segment is one more loop body to compile.
CACHE_CHUNK = 32


def cache_segments(max_k: int, chunk: int) -> list[int]:
    """The decode loop's segments as their (exclusive) end positions: chunk, 2 chunk, ..., max_k
    ([max_k] for chunk 0 or chunk >= max_k). Positions of segment [start, end) attend over a
    cache of ``cache_length(end)`` positions."""
    check_cache_chunk(chunk)
    if chunk == 0 or chunk >= max_k:
        return [max_k]
    return list(range(chunk, max_k, chunk)) + [max_k]


def per_image_keys(rng: jax.Array | None, batch: int) -> jax.Array:
    """Typed key array [batch]: ``split(rng, batch)`` for one key (default key 0), or ``rng``
    itself when it is already [batch] keys (typed, or raw uint32 [batch, 2])."""
    if rng is None:
        rng = jax.random.key(0)
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))
    if rng.ndim == 0:
        return jax.random.split(rng, batch)
    if rng.shape != (batch,):
        raise ValueError(f"rng must be one key or {batch} keys (one per image), got key array shape {rng.shape}")
    return rng


def guidance_scales(cfg_scale: jax.Array, schedule: str, pos: jax.Array, ks: jax.Array) -> jax.Array:
    """Per-image guidance scale [B] at 0-based position ``pos``: ``cfg_scale`` ('constant'), or
    rising linearly from 1 to ``cfg_scale`` at the image's last token, 1 + (s - 1)(pos + 1)/k
    ('linear')."""
    if schedule == "constant":
        return jnp.broadcast_to(cfg_scale, ks.shape)
    return 1.0 + (cfg_scale - 1.0) * (pos + 1) / ks.astype(jnp.float32)


def combine_guidance(cond: jax.Array, null: jax.Array, scale: jax.Array) -> jax.Array:
    """Classifier-free guidance in float32: u + s (c - u). cond, null [B, V]; scale [B]."""
    cond, null = cond.astype(jnp.float32), null.astype(jnp.float32)
    return null + scale[:, None] * (cond - null)


def stop_as_conditioned(guided: jax.Array, cond: jax.Array, eos_id: int) -> jax.Array:
    """Guided logits [B, V] whose EOS probability is the conditional pass's, p_c(EOS), and whose
    other ids keep their guided ratios. Guidance shapes what is drawn, not when to stop: applied
    to EOS too, u + s (c - u) lowers EOS wherever the class does not raise it (the favoured ids
    gain, EOS does not), and samples run longer than the data as s grows."""
    cond = cond.astype(jnp.float32)
    log_stop = jax.nn.log_softmax(cond, axis=-1)[:, eos_id]
    log_go = jnp.log1p(-jnp.exp(jnp.minimum(log_stop, -1e-7)))  # log (1 - p_c(EOS))
    others = jax.nn.logsumexp(guided.at[:, eos_id].set(-jnp.inf), axis=-1)
    return guided.at[:, eos_id].set(log_stop - log_go + others)


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the ``top_k`` largest logits (0 = all), then the smallest head of those whose
    probability mass reaches ``top_p`` (the top one always stays); the rest become -inf. [B, V]."""
    vocab = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take(desc, jnp.clip(top_k, 1, vocab) - 1, axis=-1)
    k_floor = jnp.where(top_k > 0, kth, -jnp.inf)  # [B]
    desc = jnp.where(desc >= k_floor[:, None], desc, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    p_floor = jnp.min(jnp.where(mass_before < top_p, desc, jnp.inf), axis=-1)
    floor = jnp.maximum(k_floor, p_floor)
    return jnp.where(logits >= floor[:, None], logits, -jnp.inf)


def sample_tokens(
    logits: jax.Array,
    keys: jax.Array,
    pos: jax.Array | int,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    use_filter: bool,
) -> jax.Array:
    """One token per image from float32 logits [B, V] with per-image keys [B] at position pos:
    softmax(logits / temperature) after top-k / top-p; temperature 0 is argmax. -> int32 [B]."""
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    if use_filter:
        scaled = filter_logits(scaled, top_k, top_p)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, pos)
    drawn = categorical_two_level(step_keys, scaled)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


def categorical_two_level(keys: jax.Array, logits: jax.Array, block: int = 256) -> jax.Array:
    """One draw per row from softmax(logits) (float32 [B, V], -inf = never) with keys [B]:
    -> int32 [B]. Inverse-CDF sampling in two levels, a block of ``block`` ids by the blocks'
    masses, then an id within it, from two uniforms per row. Gumbel-max
    (``jax.random.categorical``) needs V random numbers per row: at the released 64,000 ids
    and 64 rows it took 66 ms per step on this machine's CPU, more than the head's matmul
    (44 ms); this takes 2 ms."""
    b, v = logits.shape
    block = min(block, v)
    nb = -(-v // block)
    x = jnp.pad(logits.astype(jnp.float32), ((0, 0), (0, nb * block - v)), constant_values=-jnp.inf)
    p = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True)).reshape(b, nb, block)
    u = jax.vmap(lambda k: jax.random.uniform(k, (2,), jnp.float32))(keys)

    def pick(mass: jax.Array, u: jax.Array) -> jax.Array:
        # The first index whose cumulative mass exceeds u * total (a zero-mass index never
        # does); rounding at the top falls back to the last index with mass.
        cdf = jnp.cumsum(mass, axis=-1)
        first = jnp.sum(cdf <= u[:, None] * cdf[:, -1:], axis=-1)
        last = mass.shape[-1] - 1 - jnp.argmax(mass[:, ::-1] > 0, axis=-1)
        return jnp.minimum(first, last)

    j = pick(p.sum(axis=-1), u[:, 0])
    i = pick(jnp.take_along_axis(p, j[:, None, None], axis=1)[:, 0], u[:, 1])
    return (j * block + i).astype(jnp.int32)


def kv_cache_bytes(gen: Any, batch: int, max_k: int, use_guidance: bool) -> int:
    """Bytes of the sampler's KV cache for ``batch`` images and ``max_k`` positions (its size in
    the last segment, the largest)."""
    cfg = gen.config
    rows = 2 * batch if use_guidance else batch
    length = gen.cache_length(max_k)
    return cfg.depth * 2 * rows * cfg.num_heads * length * cfg.head_dim * cfg.compute_dtype.itemsize


# logits_at(params, cond_all (N rows), tokens_all [N, max_k], i, state) -> (float32 [N, V], state)
LogitsAt = Callable[[Any, jax.Array, jax.Array, Any, Any], tuple[jax.Array, Any]]


def _cached_logits_at(gen: Any) -> LogitsAt:
    def logits_at(params, cond, tokens, i, cache):
        if isinstance(i, int) and i == 0:
            return gen.prefill(params, cond, cache)
        prev = jax.lax.dynamic_index_in_dim(tokens, i - 1, axis=1, keepdims=False)
        return gen.decode(params, prev, i, cache)

    return logits_at


def _uncached_logits_at(gen: Any) -> LogitsAt:
    # The whole teacher-forced forward over the [N, max_k] buffer; causality makes the
    # not-yet-sampled tail irrelevant to position i.
    def logits_at(params, cond, tokens, i, state):
        logits = gen.net.apply({"params": params}, cond, tokens)
        return jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), state

    return logits_at


def mask_eos(gen: Any, logits: jax.Array, allow: jax.Array | bool) -> jax.Array:
    """Logits [B, num_ids] with the EOS id at -inf where not ``allow`` (a model without EOS:
    unchanged). Positions before an image's first token, and fixed-k sampling, never end."""
    if not gen.config.eos:
        return logits
    eos = gen.config.eos_id
    return logits.at[:, eos].set(jnp.where(allow, logits[:, eos], -jnp.inf))


@functools.partial(
    jax.jit,
    static_argnames=("gen", "max_k", "use_guidance", "use_filter", "schedule", "return_logits", "cached", "until_eos",
                     "cache_chunk"),
)
def _program(
    params, cond, keys, ks, cfg_scale, temperature, top_k, top_p,
    *, gen, max_k, use_guidance, use_filter, schedule, return_logits, cached, until_eos=False,
    cache_chunk=CACHE_CHUNK,
):
    """-> (tokens int32 [B, max_k] with PAD_TOKEN at positions >= length, lengths int32 [B],
    logits [B, max_k, num_ids] or None). ``until_eos``: each image ends at its first EOS (its
    length is that position; at most max_k) and the loop stops once all have; else at ks.
    The cached loop runs in ``cache_segments(max_k, cache_chunk)``, growing the cache between
    segments."""
    b = keys.shape[0]
    vocab = gen.config.num_ids
    rows_cond = concat_conditions(cond, null_condition(gen.config, cond)) if use_guidance else cond
    logits_at = _cached_logits_at(gen) if cached else _uncached_logits_at(gen)
    ends = cache_segments(max_k, cache_chunk) if cached else [max_k]
    state = gen.init_cache(2 * b if use_guidance else b, gen.cache_length(ends[0])) if cached else None

    def step(i, carry):
        tokens, state, record, lengths = carry
        rows_tokens = jnp.concatenate([tokens, tokens]) if use_guidance else tokens
        raw, state = logits_at(params, rows_cond, rows_tokens, i, state)
        if use_guidance:
            logits = combine_guidance(raw[:b], raw[b:], guidance_scales(cfg_scale, schedule, i, ks))
            if until_eos:
                logits = stop_as_conditioned(logits, raw[:b], gen.config.eos_id)
        else:
            logits = raw
        logits = mask_eos(gen, logits, until_eos and not (isinstance(i, int) and i == 0))
        tok = sample_tokens(logits, keys, i, temperature, top_k, top_p, use_filter)
        # The buffer keeps what was drawn (valid ids, so rows that have ended still feed finite
        # embeddings); positions >= length become PAD_TOKEN at the end.
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        if until_eos:
            lengths = jnp.where((lengths == max_k) & (tok == gen.config.eos_id), i, lengths)
        if return_logits:
            record = jax.lax.dynamic_update_slice(record, logits[:, None], (0, i, 0))
        return tokens, state, record, lengths

    tokens = jnp.zeros((b, max_k), jnp.int32)
    record = jnp.zeros((b, max_k, vocab), jnp.float32) if return_logits else None
    lengths = jnp.full((b,), max_k, jnp.int32) if until_eos else ks
    carry = step(0, (tokens, state, record, lengths))
    i = jnp.int32(1)  # sampling until EOS: the next position, carried from segment to segment
    for segment, (start, end) in enumerate(zip([1] + ends[:-1], ends)):
        if segment:
            carry = (carry[0], gen.grow_cache(carry[1], gen.cache_length(end))) + carry[2:]
        if until_eos:
            # (i, carry) until every image has drawn EOS or the segment's end is reached; a
            # segment after the batch has ended runs no step.
            def running(loop, end=end):
                i, (_, _, _, lengths) = loop
                return (i < end) & jnp.any(lengths == max_k)

            i, carry = jax.lax.while_loop(running, lambda loop: (loop[0] + 1, step(loop[0], loop[1])), (i, carry))
        else:
            carry = jax.lax.fori_loop(start, end, step, carry)
    tokens, _, record, lengths = carry
    tokens = jnp.where(jnp.arange(max_k)[None, :] < lengths[:, None], tokens, PAD_TOKEN)
    return tokens, lengths, record


def generate(
    gen: Any,
    params: Any,
    cond: Any,
    num_tokens: Any,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    guidance_schedule: str = "constant",
    return_logits: bool = False,
    cached: bool = True,
    cache_chunk: int = CACHE_CHUNK,
) -> Any:
    """Sample token ids: cond (labels int [B], num_classes = null; or a text condition of B
    rows, see ``conditioning``) -> int32 [B, k] for an int k, or [B, max(k)] for an int array
    k [B] with ``PAD_TOKEN`` at positions >= k[b].

    ``num_tokens=None`` (a model with ``config.eos``): each image ends where it draws EOS (never
    before its first token), or at max_tokens; returns (tokens int32 [B, max(lengths)] with
    ``PAD_TOKEN`` at positions >= lengths[b], lengths int32 [B]), from one loop that stops once
    every image has ended. With an int k an EOS model never draws EOS.

    cfg_scale: guidance scale s (1 = no guidance pass; 0 = unconditional); guidance_schedule:
    'constant' or 'linear' (see ``guidance_scales``; with num_tokens=None it rises to s at
    max_tokens; the EOS probability stays the conditional pass's, ``stop_as_conditioned``).
    temperature 0 = greedy. top_k 0 and top_p 1 disable those filters. rng: see the module
    docstring. ``return_logits`` also returns (last) the float32 logits each
    position was drawn from (guided, before temperature and filters) [B, max_k, num_ids].
    ``cached=False`` recomputes the whole [B, max_k] teacher-forced forward at every position
    instead of using a KV cache (the reference and the benchmark's comparison).
    ``cache_chunk``: decode positions per cache segment (``cache_segments``; 0 = one cache of
    the full length from the start); it changes speed, and the logits only by float32 rounding
    (attention sums over another length).
    """
    cfg = gen.config
    b = condition_batch(cfg, cond)
    until_eos = num_tokens is None
    if until_eos and not cfg.eos:
        raise ValueError("num_tokens=None samples until EOS, but this generator has none (GeneratorConfig.eos=False)")
    ks = np.full((b,), cfg.max_tokens, np.int32) if until_eos else check_num_tokens(cfg, num_tokens, b)
    check_sampling(cfg_scale, temperature, top_k, top_p)
    check_cache_chunk(cache_chunk)
    if guidance_schedule not in SCHEDULES:
        raise ValueError(f"guidance_schedule must be one of {SCHEDULES}, got {guidance_schedule!r}")
    tokens, lengths, record = _program(
        params,
        prepare_condition(cfg, cond),
        per_image_keys(rng, b),
        jnp.asarray(ks),
        jnp.float32(cfg_scale),
        jnp.float32(temperature),
        jnp.int32(top_k),
        jnp.float32(top_p),
        gen=gen,
        max_k=int(ks.max()),
        use_guidance=float(cfg_scale) != 1.0,
        use_filter=int(top_k) > 0 or float(top_p) < 1.0,
        schedule=guidance_schedule,
        return_logits=bool(return_logits),
        cached=bool(cached),
        until_eos=until_eos,
        cache_chunk=int(cache_chunk),
    )
    if not until_eos:
        return (tokens, record) if return_logits else tokens
    longest = int(jnp.max(lengths))
    out = (tokens[:, :longest], lengths)
    return out + (record,) if return_logits else out


def program_cache_size() -> int:
    """How many sampler programs have been compiled in this process (for the caching test)."""
    return _program._cache_size()
