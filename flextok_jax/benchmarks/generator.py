"""Benchmark rows for the AR generator: the sampler with and without its KV cache, and a train step.

``python -m flextok_jax.benchmarks generate|train_generator --size tiny|d12``. FLOPs are XLA's cost analysis of one program
per loop iteration times the trip count (XLA counts a while-loop body once): the cached sampler is
prefill + (k - 1) decode steps (each attending over its cache segment's whole static cache,
masked positions included; ``sampler.cache_segments``), the uncached one k teacher-forced
forwards over the [rows, k] buffer.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flextok_jax.benchmarks.models import random_params
from flextok_jax.benchmarks.timing import CEILING_N, Row, compiled_cost, matmul_ceiling, median_seconds, peak_rss_mib
from flextok_jax.benchmarks.train import benchmark_train_step
from flextok_jax.data.token_buckets import plan_buckets
from flextok_jax.generator import Generator, preset, sampler
from flextok_jax.train import config as train_config

GUIDANCE_SCALE = 3.0
SIZES = ("tiny", "d12")


def bench_generator(size: str, dtype: str = "float32", seed: int = 0) -> tuple[Generator, Any]:
    """A generator of preset ``size`` ('tiny' gets 256 positions so k = 256 fits) with every
    parameter random (the zero head of the training init would make the logits trivial)."""
    if size not in SIZES:
        raise ValueError(f"unknown benchmark size {size!r}; expected one of {SIZES}")
    cfg = preset(size, dtype=dtype, **({"max_tokens": 256} if size == "tiny" else {}))
    gen = Generator(cfg)
    return gen, random_params(gen, seed)


def measure(what: str, batch: int, k: Any, dtype: str, call: Callable[[], Any], flops: float,
            mib: float = float("nan"), repeats: int = 3, ceiling_n: int = CEILING_N) -> Row:
    """Time ``call`` between two ceiling measurements (the better one is the row's reference, as
    in ``runner.Bench.measure``: the machine may be shared)."""
    before = matmul_ceiling(jnp.dtype(dtype), ceiling_n, repeats=3)
    seconds = median_seconds(call, repeats)
    ceiling = max(before, matmul_ceiling(jnp.dtype(dtype), ceiling_n, repeats=3))
    row = Row(what, batch, str(k), dtype, seconds, flops, ceiling, mib, peak_rss_mib())
    print(f"# {what} b={batch} k={k}: {seconds:.4g} s, {row.pct_ceiling:.1f}% of ceiling", file=sys.stderr, flush=True)
    return row


def kv_cache_mib(gen: Generator, batch: int, k: int, guidance: bool) -> float:
    """MiB of the sampler's KV cache (all layers, k and v) for ``batch`` images of ``k`` tokens."""
    return sampler.kv_cache_bytes(gen, batch, k, guidance) / 2**20


def sampler_flops(gen: Generator, params: Any, batch: int, k: int, guidance: bool, cached: bool) -> tuple[float, float]:
    """(FLOPs of one whole ``generate`` call, MiB of its largest per-step program)."""
    rows = 2 * batch if guidance else batch
    labels = jnp.zeros((rows,), jnp.int32)
    if not cached:
        flops, mib = compiled_cost(lambda p, t: gen.net.apply({"params": p}, labels, t), params,
                                   jnp.zeros((rows, k), jnp.int32))
        return k * flops, mib
    ends = sampler.cache_segments(k, sampler.CACHE_CHUNK)
    pre_flops, mib = compiled_cost(lambda p, c: gen.prefill(p, labels, c), params,
                                   gen.init_cache(rows, gen.cache_length(ends[0])))
    total, start = pre_flops, 1
    for end in ends:  # each segment's steps attend over that segment's cache
        step_flops, step_mib = compiled_cost(lambda p, c: gen.decode(p, labels, jnp.int32(end - 1), c), params,
                                             gen.init_cache(rows, gen.cache_length(end)))
        total, mib, start = total + (end - start) * step_flops, max(mib, step_mib), end
    return total, mib


def sampler_rows(
    size: str,
    batches: Sequence[int] = (1, 64),
    ks: Sequence[int] = (32, 256),
    guidance: Sequence[bool] = (False, True),
    cached: Sequence[bool] = (True, False),
    dtype: str = "float32",
    repeats: int = 3,
    ceiling_n: int = CEILING_N,
) -> list[Row]:
    """One row per (cached, batch, k, guidance): the whole ``generate`` call (temperature 1,
    top-k 0, top-p 1). The KV-cache size is in the row's ``what``."""
    gen, params = bench_generator(size, dtype)
    rows = []
    for use_cache in cached:
        for b in batches:
            labels = jnp.arange(b, dtype=jnp.int32) % gen.config.num_classes
            for k in ks:
                for g in guidance:
                    scale = GUIDANCE_SCALE if g else 1.0
                    flops, mib = sampler_flops(gen, params, b, k, g, use_cache)
                    what = f"{size} ar sample {'kv cache' if use_cache else 'no cache'}"
                    what += f" cfg {scale}" if g else ""
                    if use_cache:
                        what += f" (cache {kv_cache_mib(gen, b, k, g):.1f} MiB)"

                    def call(labels=labels, k=k, scale=scale, use_cache=use_cache):
                        return sampler.generate(gen, params, labels, k, cfg_scale=scale, rng=jax.random.key(0),
                                                cached=use_cache)

                    rows.append(measure(what, b, k, dtype, call, flops, mib, repeats, ceiling_n))
    return rows


def _train_config(size: str, batch: int, num_tokens: int | None, dtype: str) -> tuple[Any, ml_collections.ConfigDict]:
    cfg = preset(size, dtype=dtype, **({"max_tokens": num_tokens} if num_tokens else {}))
    config = train_config.generator_base_config(ml_collections.ConfigDict(
        {k: v for k, v in cfg.to_dict().items() if k != "dtype"}))
    config.dtype = dtype
    config.train.global_batch_size = batch
    config.mesh.shape = (1, 1, 1)
    return cfg, config


def _timed_train_step(config: ml_collections.ConfigDict, cfg: Any, batch: int, length: int, dtype: str,
                      repeats: int, ceiling_n: int, what: str) -> Row:
    rng = np.random.default_rng(1)
    host = {"tokens": rng.integers(0, cfg.vocab_size, (batch, length), dtype=np.int32),
            "label": (np.arange(batch) % cfg.num_classes).astype(np.int32)}
    before = matmul_ceiling(jnp.dtype(dtype), ceiling_n, repeats=3)
    out = benchmark_train_step(config, host, steps=repeats, devices=jax.devices()[:1])
    ceiling = max(before, matmul_ceiling(jnp.dtype(dtype), ceiling_n, repeats=3))
    return Row(what, batch, str(length), dtype, out["step_s"], out["flops_per_step"], ceiling, float("nan"),
               peak_rss_mib())


def train_step_row(
    size: str,
    batch: int,
    num_tokens: int | None = None,
    dtype: str = "float32",
    repeats: int = 3,
    ceiling_n: int = CEILING_N,
) -> tuple[Row, float]:
    """(row, train tokens/s) of the training system's jitted generator step (``TrainSetup`` with
    task='generator': next-token loss + grad + AdamW + EMA) on ``batch`` sequences of
    ``num_tokens`` (default: max_tokens) random ids, one device."""
    cfg, config = _train_config(size, batch, num_tokens, dtype)
    row = _timed_train_step(config, cfg, batch, cfg.max_tokens, dtype, repeats, ceiling_n, f"{size} ar train step")
    return row, batch * cfg.max_tokens / row.seconds


def bucketed_train_rows(
    size: str,
    lengths: Sequence[int],
    tokens_per_step: int,
    dtype: str = "float32",
    repeats: int = 3,
    ceiling_n: int = CEILING_N,
) -> tuple[list[Row], dict[str, float]]:
    """One row per bucket of a length-bucketed plan (``token_buckets.plan_buckets``, equal
    weights) and one for the fixed-length step at the longest bucket's length (the model's
    max_tokens) with the same tokens per step; and
    a summary: tokens/s of the bucket mix (expected step time = mean over buckets) and of the
    fixed step."""
    cfg, config = _train_config(size, 1, max(lengths), dtype)  # positions for the longest bucket
    plan = plan_buckets(tuple(lengths), tokens_per_step)
    rows = [_timed_train_step(config, cfg, b, n, dtype, repeats, ceiling_n, f"{size} ar train step, bucket {n}")
            for n, b in zip(plan.lengths, plan.batch_sizes)]
    fixed_batch = max(1, tokens_per_step // cfg.max_tokens)
    fixed = _timed_train_step(config, cfg, fixed_batch, cfg.max_tokens, dtype, repeats, ceiling_n,
                              f"{size} ar train step, fixed {cfg.max_tokens}")
    mix_s = float(np.dot(plan.weights, [r.seconds for r in rows]))
    mix_tokens = float(np.dot(plan.weights, plan.tokens_per_step))
    summary = {"bucketed_tokens_per_s": mix_tokens / mix_s,
               "fixed_tokens_per_s": fixed_batch * cfg.max_tokens / fixed.seconds}
    return rows + [fixed], summary
