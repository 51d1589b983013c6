"""``python -m flextok_jax.benchmarks {tokenize,detokenize,train,generate,train_generator,all} [--size d12|tiny]``
(``train_generator --buckets 8 16 32 64 128 256``: also one step per bucket of length-bucketed training)

Prints one table row per measured program: seconds is the median of a few runs after a warm-up
(compilation) run; FLOPs come from XLA's cost analysis (loop bodies times their trip count);
% ceiling compares the achieved FLOP/s with a large jnp.dot of the same dtype, timed right before
and after each row (the better of the two), so a shared machine skews both alike.
On Linux the process re-executes itself with glibc's huge-page tunable first, as the main job
does (``flextok_jax.huge_pages``; set GLIBC_TUNABLES to opt out).
"""
from __future__ import annotations

import argparse
import sys

from flextok_jax import huge_pages
from flextok_jax.benchmarks.timing import CEILING_N, Row, device_peak_mib, matmul_ceiling, peak_rss_mib

COLUMNS = ("what", "batch", "k", "dtype", "seconds", "images/s", "GFLOP/image", "GFLOP/s", "% ceiling",
           "program MiB", "peak RSS MiB")


def format_row(r: Row) -> list[str]:
    return [r.what, str(r.batch), r.k, r.dtype, f"{r.seconds:.4g}", f"{r.images_per_s:.4g}",
            f"{r.flops / r.batch / 1e9:.4g}", f"{r.flop_rate / 1e9:.4g}", f"{r.pct_ceiling:.1f}",
            f"{r.program_mib:.4g}", f"{r.peak_rss_mib:.0f}"]


def print_table(rows: list[Row], out=sys.stdout) -> None:
    cells = [list(COLUMNS)] + [format_row(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for j, line in enumerate(cells):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))), file=out)
        if j == 0:
            print("-+-".join("-" * w for w in widths), file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m flextok_jax.benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("tokenize", "detokenize", "train", "generate", "train_generator", "all"))
    ap.add_argument("--size", choices=("d12", "tiny"), default="d12")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch sizes (default: 1; generate: 1 64; train_generator: 64)")
    ap.add_argument("--k", type=int, nargs="+", default=None,
                    help="token counts (default: all registers and n/8)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps of detokenize")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    ap.add_argument("--buckets", type=int, nargs="+", default=None,
                    help="train_generator: also time one step per bucket length at --tokens_per_step, against "
                         "the fixed-length step (length-bucketed training)")
    ap.add_argument("--tokens_per_step", type=int, default=16_384, help="train_generator --buckets: tokens per step")
    ap.add_argument("--ceiling-size", type=int, default=CEILING_N, help="n of the n^3 matmul ceiling")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import jax.numpy as jnp

    from flextok_jax.benchmarks.models import model_config
    from flextok_jax.benchmarks.runner import Bench, run_detokenize, run_tokenize, run_train

    # Measured first, so every row's % is against this machine's current state.
    cn = args.ceiling_size
    ceilings = {d: matmul_ceiling(getattr(jnp, d), cn) for d in ("float32", "bfloat16")}
    rows = [Row(f"matmul {cn}^3 {d}", 1, "-", d, 2.0 * cn**3 / c, 2.0 * cn**3, c, float("nan"), peak_rss_mib())
            for d, c in ceilings.items()]
    batches = args.batch or [1]
    n = model_config(args.size).n_registers
    ks = args.k or [n, max(1, n // 8)]
    if args.mode in ("tokenize", "detokenize", "all"):
        bench = Bench(args.size, batches[0], args.dtype, args.repeats, cn)
        if args.mode in ("tokenize", "all"):
            run_tokenize(bench, ks)
        if args.mode in ("detokenize", "all"):
            run_detokenize(bench, ks, args.steps)
        rows += bench.rows
    if args.mode in ("train", "all"):
        rows += run_train(args.size, batches[0], args.dtype, ceilings)
    if args.mode in ("generate", "all"):
        from flextok_jax.benchmarks.generator import sampler_rows

        rows += sampler_rows(args.size, args.batch or (1, 64), args.k or (32, 256), dtype=args.dtype,
                             repeats=args.repeats, ceiling_n=cn)
    if args.mode in ("train_generator", "all"):
        from flextok_jax.benchmarks.generator import train_step_row

        for b in args.batch or (64,):
            row, tokens_per_s = train_step_row(args.size, b, dtype=args.dtype, repeats=args.repeats, ceiling_n=cn)
            rows.append(row)
            print(f"# {row.what} batch {b}: {tokens_per_s:.4g} tokens/s", file=sys.stderr)
        if args.buckets:
            from flextok_jax.benchmarks.generator import bucketed_train_rows

            bucket_rows, summary = bucketed_train_rows(args.size, args.buckets, args.tokens_per_step, dtype=args.dtype,
                                                       repeats=args.repeats, ceiling_n=cn)
            rows += bucket_rows
            print(f"# length-bucketed training at {args.tokens_per_step} tokens/step, buckets {args.buckets} "
                  f"(equal weights): {summary['bucketed_tokens_per_s']:.4g} tokens/s; fixed "
                  f"{bucket_rows[-1].k}: {summary['fixed_tokens_per_s']:.4g} tokens/s", file=sys.stderr)
    print_table(rows)
    dev = device_peak_mib()
    if dev is not None:
        print(f"device peak memory: {dev:.0f} MiB")


if __name__ == "__main__":
    # Measured as the main job and the flextok command run (d12 train step, batch 8: 11.4 s without
    # the huge-page tunable, 10.2 s with it).
    huge_pages.reexec_with_huge_pages()
    main()
