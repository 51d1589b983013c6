"""Output of the FID runner: a text table, results.json (atomic) and fid_vs_k.png (a bare Figure)."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure


def _number(value: Any, width: int, digits: int) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def format_table(payload: dict[str, Any]) -> str:
    """The rows of a results payload as a table: k (and CFG scale), samples, the distance, IS,
    precision / recall when present; the header names the metric with its note (e.g. that
    FID-FMNIST is not comparable to Inception FID)."""
    rows = payload["rows"]
    label = payload["network"]["label"]
    metric = payload["network"]["metric"]
    is_name = "IS" if payload["network"]["name"] == "inception" else f"IS-{payload['network']['name'].upper()}"
    has_cfg = any("cfg_scale" in r for r in rows)
    has_is = any("is_mean" in r for r in rows)
    has_pr = any("precision" in r for r in rows)
    cols = ["tokens k"] + (["cfg"] if has_cfg else []) + ["samples", metric.rjust(10)]
    cols += [f"{is_name} (std)".rjust(16)] if has_is else []
    cols += ["precision", "recall"] if has_pr else []
    lines = [f"{payload['mode']}: {label}", " | ".join(cols), "-|-".join("-" * len(c) for c in cols)]
    for r in rows:
        cells = [f"{r['k']:8d}"] + ([f"{r['cfg_scale']:3g}"] if has_cfg else []) + [f"{r['num_samples']:7d}",
                                                                                      _number(r["fid"], 10, 3)]
        if has_is:
            cells.append(f"{r['is_mean']:8.3f} ({r['is_std']:5.3f})" if "is_mean" in r else "-".rjust(16))
        if has_pr:
            cells += [_number(r.get("precision"), 9, 3), _number(r.get("recall"), 6, 3)]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def write_results(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write the payload as JSON through a temporary file renamed into place."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def plot_fid_vs_k(path: str | os.PathLike, rows: Sequence[dict[str, Any]], label: str) -> None:
    """The distance against k (log2 axis), one line per CFG scale when the rows have one."""
    fig = Figure(figsize=(6, 4), dpi=100)  # no pyplot: no global backend switch
    ax = fig.subplots()
    scales = sorted({r.get("cfg_scale") for r in rows}, key=lambda s: -1 if s is None else s)
    for s in scales:
        pts = sorted((r["k"], r["fid"]) for r in rows if r.get("cfg_scale") == s)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=None if s is None else f"cfg {s:g}")
    ax.set_xscale("log", base=2)
    ks = sorted({int(r["k"]) for r in rows})
    ax.set_xticks(ks, labels=[str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("tokens k")
    ax.set_ylabel(label.split(",")[0])
    ax.set_title(label, fontsize=9)
    if any(s is not None for s in scales):
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
