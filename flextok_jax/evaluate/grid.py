"""Image grids: columns of images (originals, then reconstructions or samples) as one picture."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Small images are hard to see: labelled grids are enlarged (nearest neighbour) to cells of at
# least this many pixels.
MIN_CELL_PIXELS = 128


def grid_image(columns: np.ndarray) -> np.ndarray:
    """[C, N, H, W, 3] floats in [-1, 1] -> uint8 [N*H, C*W, 3] (rows: images, columns: C)."""
    c, n, h, w, _ = columns.shape
    x = np.clip((np.asarray(columns, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return x.transpose(1, 2, 0, 3, 4).reshape(n * h, c * w, 3)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """uint8 [H, W, 3] -> PNG (parent folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)


def save_labelled_grid(
    path: str | os.PathLike,
    columns: np.ndarray,
    column_labels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
) -> None:
    """A ``grid_image`` with a header naming each column (and optionally a left margin naming
    each row, and ``cell_labels[row][column]`` written in the corner of each cell), enlarged so
    that a cell is at least MIN_CELL_PIXELS high."""
    grid = Image.fromarray(grid_image(columns))
    c, n, h, w, _ = columns.shape
    scale = max(1, MIN_CELL_PIXELS // max(h, 1))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    header, margin = 14, (0 if row_labels is None else 8 + 6 * max(len(s) for s in row_labels))
    canvas = Image.new("RGB", (grid.width + margin, grid.height + header), "white")
    canvas.paste(grid, (margin, header))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(column_labels):
        draw.text((margin + i * w * scale + 2, 1), label, fill="black")
    for j, label in enumerate(row_labels or ()):
        draw.text((2, header + j * h * scale + h * scale // 2 - 5), label, fill="black")
    for j, row in enumerate(cell_labels or ()):
        for i, label in enumerate(row):
            x, y = margin + i * w * scale + 3, header + j * h * scale + 2
            draw.rectangle(draw.textbbox((x, y), label), fill="black")
            draw.text((x, y), label, fill="yellow")
    canvas.save(os.fspath(path))
