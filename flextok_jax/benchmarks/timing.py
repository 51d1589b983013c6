"""Timing, FLOP counting, the matmul ceiling and memory, for the benchmark table."""
from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

CEILING_N = 2048


@dataclasses.dataclass
class Row:
    """One line of the benchmark table; ``flops`` is per call (all images)."""

    what: str
    batch: int
    k: str
    dtype: str
    seconds: float
    flops: float
    ceiling: float  # matmul FLOP/s of the same dtype, measured in this run
    program_mib: float = float("nan")  # XLA's temp + argument + output bytes of the program
    peak_rss_mib: float = float("nan")  # process peak so far

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    @property
    def flop_rate(self) -> float:
        return self.flops / self.seconds

    @property
    def pct_ceiling(self) -> float:
        return 100.0 * self.flop_rate / self.ceiling


def median_seconds(fn: Callable[[], Any], repeats: int = 3, budget_s: float = 60.0) -> float:
    """Median wall time of ``fn()`` (blocked until ready) over up to ``repeats`` runs after one
    warm-up run (which absorbs compilation); stops early once ``budget_s`` of timed runs is spent."""
    jax.block_until_ready(fn())
    times: list[float] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return statistics.median(times)


def compiled_flops(compiled: Any) -> float:
    """XLA's cost-analysis FLOPs of a compiled program (nan when the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def compiled_cost(fn: Callable, *args: Any) -> tuple[float, float]:
    """(XLA cost-analysis FLOPs, program MiB) of ``jax.jit(fn)`` on ``args``.

    XLA counts a while-loop body once, not times its trip count, so callers count loops
    themselves (see ``runner.run_detokenize``).
    """
    compiled = jax.jit(fn).lower(*args).compile()
    flops = compiled_flops(compiled)
    mib = float("nan")
    mem = compiled.memory_analysis()
    if mem is not None:
        total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        mib = total / 2**20
    return flops, mib


def matmul_ceiling(dtype: Any, n: int = CEILING_N, repeats: int = 5) -> float:
    """FLOP/s of a jitted [n, n] @ [n, n] jnp.dot in ``dtype`` on this machine, right now."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    return 2.0 * n**3 / median_seconds(lambda: dot(a, b), repeats, budget_s=10.0)


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mib() -> float | None:
    """Peak device memory where the backend reports it (GPU/TPU); None on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20
