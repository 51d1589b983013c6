"""Metrics out of the train loop: JSON lines, TensorBoard, and a tqdm progress bar with ETA.

Only process 0 writes; every process may call these methods.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
import tqdm


class MetricsLogger:
    """``log(step, metrics)`` appends to ``WORKDIR/metrics.jsonl`` and TensorBoard (``WORKDIR/tb``)."""

    def __init__(self, workdir: str | os.PathLike, total_steps: int, initial_step: int = 0, progress: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        os.makedirs(os.fspath(workdir), exist_ok=True)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tb"))
        self._file = open(self.path, "a")
        if progress:
            self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)
        self._t_last = time.time()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write scalars; ``step`` is the number of completed steps."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "grad_norm") if k in row})

    def advance(self, n: int = 1) -> None:
        """Move the progress bar (its rate gives the ETA)."""
        if self._bar is not None:
            self._bar.update(n)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """uint8 [H, W, 3] to TensorBoard."""
        if self.enabled:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def message(self, text: str) -> None:
        if self.enabled:
            (tqdm.tqdm.write if self._bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        self._file.close()
