"""The benchmark cases: each builds jitted callables on random weights and returns table rows."""
from __future__ import annotations

import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax import flow
from flextok_jax.benchmarks.models import model_config, random_params
from flextok_jax.benchmarks.timing import (
    CEILING_N,
    Row,
    compiled_cost,
    matmul_ceiling,
    median_seconds,
    peak_rss_mib,
)
from flextok_jax.model.flextok import FlexTok, register_buckets
from flextok_jax.model.fsq import ids_to_codes
from flextok_jax.model.vae import AutoencoderKL

GUIDANCE_SCALE = 7.5


class Bench:
    """Shared state of one benchmark run: model, params, inputs and the measured ceilings."""

    def __init__(self, size: str, batch: int, dtype: str, repeats: int = 3, ceiling_n: int = CEILING_N):
        self.size, self.batch, self.dtype_name, self.repeats = size, batch, dtype, repeats
        self.dtype, self.ceiling_n = jnp.dtype(dtype), ceiling_n
        self.model = FlexTok(model_config(size), self.dtype)
        self.params = random_params(self.model, seed=0)
        h, w = self.model.config.image_size
        self.images = jax.random.uniform(jax.random.key(1), (batch, h, w, 3), minval=-1.0, maxval=1.0)
        self.noise = jax.random.normal(jax.random.key(2), (batch,) + self.model.latent_shape)
        self.rows: list[Row] = []

    def measure(self, what: str, k: Any, call: Callable[[], Any], flops: float, mib: float = float("nan")) -> Row:
        # The machine may be shared: the ceiling is re-measured around every row, and the better
        # of the two (the least disturbed) is the row's reference.
        before = matmul_ceiling(self.dtype, self.ceiling_n, repeats=3)
        seconds = median_seconds(call, self.repeats)
        ceiling = max(before, matmul_ceiling(self.dtype, self.ceiling_n, repeats=3))
        row = Row(f"{self.size} {what}", self.batch, str(k), self.dtype_name, seconds, flops, ceiling,
                  mib, peak_rss_mib())
        self.rows.append(row)
        print(f"# {row.what} k={row.k}: {seconds:.4g} s", file=sys.stderr, flush=True)
        return row

    def measure_jit(self, what: str, k: Any, fn: Callable, *args: Any) -> Row:
        """Time ``jax.jit(fn)(*args)`` with FLOPs and memory from its compiled program."""
        flops, mib = compiled_cost(fn, *args)
        jitted = jax.jit(fn)
        return self.measure(what, k, lambda: jitted(*args), flops, mib)

    def direct_conv_vae(self) -> AutoencoderKL | None:
        """The model's VAE with plain (direct) 3x3 convs: same params, XLA's own convolution, so
        its row shows the convolutions against the ceiling without Winograd's FLOP savings."""
        cfg = self.model.config
        return None if cfg.vae is None else AutoencoderKL(cfg.vae, self.dtype, conv_impl="direct")

    def tokens(self, k: int) -> np.ndarray:
        return np.asarray(self.model.tokenize(self.params, self.images, num_tokens=k))


def run_tokenize(bench: Bench, ks: list[int]) -> None:
    """VAE encode, encoder to k registers, and the whole public ``tokenize`` per k."""
    m, p = bench.model, bench.params
    lat = jax.jit(m.encode_latents)(p, bench.images)
    vae = bench.measure_jit("vae encode", "-", m.encode_latents, p, bench.images)
    direct = bench.direct_conv_vae()
    if direct is not None:
        bench.measure_jit("vae encode, direct convs", "-",
                          lambda p_, im: direct.apply({"params": p_["vae"]}, im, method=AutoencoderKL.encode)[0],
                          p, bench.images)
    for k in ks:
        bench.measure_jit("encoder", k, lambda p_, x: m.encode_registers(p_, x, k), p, lat)
        flops, mib = compiled_cost(lambda p_, im: m._tokenize_jit(p_, im, k), p, bench.images)
        bench.measure("tokenize (vae+encoder+fsq)", k, lambda: m.tokenize(p, bench.images, num_tokens=k),
                      flops, max(mib, vae.program_mib))


def guided_step(m: FlexTok, p: Any, x: jax.Array, t: jax.Array, codes: jax.Array, keep: jax.Array) -> jax.Array:
    """One collapsed CFG velocity, both passes packed in one forward: the sampler loop's body."""
    v_cond, v_null = m.velocity_with_null(p, x, t, codes, keep)
    return flow.cfg_velocity(v_cond, v_null, GUIDANCE_SCALE)


def run_detokenize(bench: Bench, ks: list[int], steps: int) -> None:
    """Decoder forwards (plain full length and collapsed), VAE decode, and whole ``detokenize``."""
    m, p, cfg = bench.model, bench.params, bench.model.config
    b, n = bench.batch, cfg.n_registers
    t = jnp.full((b,), 0.5)
    ids = jnp.asarray(bench.tokens(n))
    codes = ids_to_codes(ids, cfg.fsq_levels)
    full = jnp.full((b,), n, jnp.int32)
    bench.measure_jit("decoder fwd, plain", n, lambda p_, x: m.velocity(p_, x, t, codes, full), p, bench.noise)
    vae = bench.measure_jit("vae decode", "-", m.decode_latents, p, bench.noise)
    direct = bench.direct_conv_vae()
    if direct is not None:
        bench.measure_jit("vae decode, direct convs", "-",
                          lambda p_, z: direct.apply({"params": p_["vae"]}, z, method=AutoencoderKL.decode),
                          p, bench.noise)
    for k in ks:
        keep = jnp.full((b,), k, jnp.int32)
        s = int(register_buckets(np.array([k]), n)[0])
        c = codes[:, :s]
        bench.measure_jit("decoder fwd, collapsed", k,
                          lambda p_, x: m.velocity(p_, x, t, c, keep, collapse=True), p, bench.noise)
        step = bench.measure_jit("cfg step (cond+null packed)", k,
                                 lambda p_, x: guided_step(m, p_, x, t, c, keep), p, bench.noise)
        step_flops, step_mib = step.flops, step.program_mib
        # XLA's cost analysis counts the fori_loop body once, so scale the step by hand.
        flops = steps * step_flops + vae.flops
        tok = np.asarray(ids[:, :k])
        bench.measure(f"detokenize {steps} steps cfg {GUIDANCE_SCALE}", k,
                      lambda: m.detokenize(p, tok, num_steps=steps, guidance_scale=GUIDANCE_SCALE, noise=bench.noise),
                      flops, max(step_mib, vae.program_mib))


def run_train(bench_size: str, batch: int, dtype: str, ceilings: dict[str, float]) -> list[Row]:
    """One tokenizer train step of the size's recipe (``benchmarks.train``)."""
    from flextok_jax.benchmarks.train import TOKENIZER_CONFIGS, benchmark_train_step, random_images

    config = TOKENIZER_CONFIGS[bench_size]()
    config.train.global_batch_size = batch
    config.mesh.shape = (-1, 1, 1)
    config.dtype = dtype
    before = matmul_ceiling(jnp.float32, repeats=3)
    out = benchmark_train_step(config, random_images(config, batch), steps=3)
    ceiling = max(before, matmul_ceiling(jnp.float32, repeats=3), ceilings["float32"])
    row = Row(f"{bench_size} tokenizer train step", batch, "-", dtype, out["step_s"],
              out["flops_per_step"], ceiling, float("nan"), peak_rss_mib())
    return [row]
