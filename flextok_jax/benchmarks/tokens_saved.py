"""Tokens saved per image at equal quality: adaptive k against one k for all images.

    python -m flextok_jax.benchmarks.tokens_saved --tokenizer WORKDIR/export/flextok.safetensors \\
        (--images FOLDER | --source fashion_mnist --split test) --quality 0.08 0.16 0.32 [--num_images 1000]

Decodes every image from its first k = 1, 2, 4, ..., n tokens (``FlexTok.reconstruction_distances``:
a deterministic ``--quality_steps``-step decode from one fixed noise, mean squared distance to the
image's latents) and prints, per quality target, the share of images within it at each fixed k,
the share the adaptive choice reaches (the fewest k within it; all n where none is), its mean
number of tokens, the smallest fixed k that reaches the same share and the tokens saved per image
against it (``evaluate.adaptive.equal_quality``), and the mean distance per k. ``--out`` writes it
all as JSON, with every image's name and distances.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterator, Sequence

import ml_collections
import numpy as np

from flextok_jax.data.factory import add_source_arguments, get_source
from flextok_jax.evaluate.adaptive import equal_quality


def source_images(args: argparse.Namespace, size: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 [size, size, 3] in [-1, 1]) of the first ``--num_images`` images of
    ``--images`` (name: the file, relative to the folder) or the ``--source`` (name: "source[j]",
    the j-th image kept); unreadable ones are left out (a folder's are logged)."""
    if args.images:
        from flextok_jax.cli import list_images, load_images

        for path, image in load_images(list_images(args.images)[: args.num_images], size):
            yield os.path.relpath(path, args.images), image
        return
    from flextok_jax.evaluate.runner import load_source_images

    fields = {f: getattr(args, f) for f in ("source", "split", "folder", "data_dir", "name") if getattr(args, f)}
    source = get_source(ml_collections.ConfigDict({**fields, "num_images": args.num_images, "image_size": size}))
    for j, image in enumerate(load_source_images(source, 0, min(args.num_images, len(source)), size)):
        yield f"{args.source}[{j}]", image


def distances_by_k(model: Any, params: Any, images: Iterator[tuple[str, np.ndarray]], batch_size: int,
                   num_steps: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, ks int [K], distances float [N, K]) of every (name, image) decoded from its first
    ks[j] tokens."""
    names, rows, ks, batch = [], [], None, []

    def flush() -> None:
        nonlocal ks
        _, ks, d = model.reconstruction_distances(params, np.stack(batch), None, num_steps, seed)
        rows.append(np.asarray(d))
        batch.clear()

    for name, image in images:
        names.append(name)
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not rows:
        raise ValueError("no images to measure (empty folder or source?)")
    return names, np.asarray(ks), np.concatenate(rows)


def format_table(results: Sequence[dict], ks: Sequence[int]) -> str:
    """One row per quality target: the share within it per fixed k, adaptive, tokens saved."""
    head = (["target"] + [f"k={k}" for k in ks]
            + ["adaptive", "adaptive mean k", "fixed k, same share", "tokens saved"])
    cells = [head] + [
        [f"{r['target']:g}"] + [f"{r['fixed_share'][k]:.1%}" for k in ks]
        + [f"{r['adaptive_share']:.1%}", f"{r['adaptive_mean_tokens']:.2f}", str(r["fixed_tokens_needed"]),
           f"{r['tokens_saved']:.2f} ({r['saved_fraction']:.0%})"]
        for r in results]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines[:1] + ["-+-".join("-" * w for w in widths)] + lines[1:])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m flextok_jax.benchmarks.tokens_saved",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="a file written by flextok_jax.save_params with its config")
    ap.add_argument("--images", help="a folder of images (instead of --source)")
    add_source_arguments(ap, required=False)
    ap.add_argument("--quality", type=float, nargs="+", required=True, help="distance targets")
    ap.add_argument("--num_images", type=int, default=1000)
    ap.add_argument("--quality_steps", type=int, default=2, help="Euler steps of the trial decodes")
    ap.add_argument("--seed", type=int, default=0, help="the fixed start noise of the trial decodes")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if bool(args.images) == bool(args.source):
        ap.error("give exactly one of --images FOLDER and --source")
    if any(not np.isfinite(q) or q <= 0 for q in args.quality):
        ap.error(f"--quality targets must be finite distances > 0, got {args.quality}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    from flextok_jax.params_io import load_model

    model, params = load_model(args.tokenizer)
    n, (height, width) = model.config.n_registers, model.config.image_size
    if height != width:
        raise ValueError(f"{args.tokenizer}: images of {height}x{width} px; this benchmark reads square images")
    names, ks, dist = distances_by_k(model, params, source_images(args, height), args.batch_size,
                                     args.quality_steps, args.seed)
    results = [equal_quality(dist, ks, q, n) for q in args.quality]
    mean_distance = dist.mean(axis=0)
    print(f"{dist.shape[0]} images, {args.quality_steps}-step trial decodes; mean distance per k: "
          + ", ".join(f"k={k}: {d:.4g}" for k, d in zip(ks, mean_distance)))
    print(format_table(results, [int(k) for k in ks]))
    out = {"num_images": int(dist.shape[0]), "ks": [int(k) for k in ks],
           "mean_distance": [float(d) for d in mean_distance], "quality_steps": args.quality_steps,
           "results": results, "images": names, "distances": dist.tolist()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
