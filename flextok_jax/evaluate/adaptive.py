"""Adaptive-length measurements: tokens saved at equal quality, lengths per class (the data's
against a generator's that stops by itself), and their chart."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flextok_jax.model.flextok import fewest_tokens


def equal_quality(distances: np.ndarray, ks: Sequence[int], target: float, n: int) -> dict:
    """Adaptive against fixed k at one quality target, over N images with ``distances`` [N, K]
    (distance of image i decoded from its first ks[j] tokens).

    Returns {"target", "num_images", "fixed_share": {k: share of images within the target at
    fixed k}, "adaptive_share" (within it at some k: what the adaptive choice reaches),
    "adaptive_mean_tokens" (mean chosen k, n where unmet), "fixed_tokens_needed" (the smallest
    fixed k whose share equals the adaptive share; n when none does, since no fixed k does
    better than all n), "tokens_saved" (needed - mean), "saved_fraction"}.
    """
    d = np.asarray(distances, np.float64)
    ks = [int(k) for k in ks]
    if d.ndim != 2 or d.shape[1] != len(ks) or d.shape[0] == 0:
        raise ValueError(f"distances must be [N > 0, {len(ks)}] (one column per k of {ks}), got {d.shape}")
    ok = d <= target
    fixed_share = {k: float(ok[:, j].mean()) for j, k in enumerate(ks)}
    adaptive_share = float(ok.any(axis=1).mean())
    mean_tokens = float(fewest_tokens(d, ks, target, n)[0].mean())
    needed = next((k for k in ks if fixed_share[k] >= adaptive_share), n)
    return {"target": float(target), "num_images": int(d.shape[0]), "fixed_share": fixed_share,
            "adaptive_share": adaptive_share, "adaptive_mean_tokens": mean_tokens, "fixed_tokens_needed": int(needed),
            "tokens_saved": needed - mean_tokens, "saved_fraction": (needed - mean_tokens) / needed}


def lengths_by_class(lengths: np.ndarray, labels: np.ndarray, num_classes: int) -> list[dict]:
    """Per class c (0 .. num_classes-1): {"class", "count", "mean" (nan without images),
    "counts": {k: images of length k}} of ``lengths`` int [N] with ``labels`` int [N]."""
    lengths, labels = np.asarray(lengths), np.asarray(labels)
    if lengths.shape != labels.shape or lengths.ndim != 1:
        raise ValueError(f"lengths {lengths.shape} and labels {labels.shape} must be equal 1-D shapes")
    rows = []
    for c in range(num_classes):
        mine = lengths[labels == c]
        values, counts = np.unique(mine, return_counts=True)
        rows.append({"class": c, "count": int(mine.size), "mean": float(mine.mean()) if mine.size else float("nan"),
                     "counts": {int(v): int(n) for v, n in zip(values, counts)}})
    return rows


def format_lengths_table(names: Sequence[str], data: list[dict], generated: list[dict]) -> str:
    """class | data mean k | generated mean k (| images of each)."""
    lines = ["class        | data: mean k (images) | generated: mean k (samples)",
             "-------------|-----------------------|----------------------------"]
    lines += [f"{name[:12]:12s} | {d['mean']:9.2f} ({d['count']:6d})  | {g['mean']:10.2f} ({g['count']:4d})"
              for name, d, g in zip(names, data, generated)]
    return "\n".join(lines)


def write_lengths_by_class(path: str | os.PathLike, names: Sequence[str], data: list[dict],
                           generated: list[dict], title: str) -> None:
    """A PNG of the mean k per class: the data's beside the generated samples' (``lengths_by_class``)."""
    fig = Figure(figsize=(8, 3.8), dpi=100)
    FigureCanvasAgg(fig)  # a bare Figure with its own canvas: no pyplot, no global backend
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["mean"] for r in data], 0.4, label="data (chosen k)", color="tab:blue")
    ax.bar(x + 0.2, [r["mean"] for r in generated], 0.4, label="generated (stopped at EOS)", color="tab:orange")
    ax.set_xticks(x, list(names), rotation=30, ha="right")
    ax.set_ylabel("mean tokens per image")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
