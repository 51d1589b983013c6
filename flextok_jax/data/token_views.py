"""Deterministic views of one image for token datasets: the eval view, flips and ten crops.

Every view has a fixed id, stored with its tokens, whatever augmentations a run selects:

    id  name                   pixels (S = image_size, C = int(1.1 * S))
    0   center                 resize shorter side to S, centre crop S x S (the eval transform)
    1   center_flip            view 0 mirrored left-right
    2   crop_center            resize shorter side to C, centre crop C x C, then its centre S x S
    3   crop_top_left          ... of that C x C square: top-left S x S
    4   crop_top_right         top-right
    5   crop_bottom_left       bottom-left
    6   crop_bottom_right      bottom-right
    7-11                       views 2-6 mirrored left-right

Views 2-11 are the ten-crop augmentation LlamaGen uses to extract class-conditional training
codes (crop range 1.1); view 0 (and 1) is the image as the tokenizer saw it in evaluation.
``augment=()`` gives [0], ``("flip",)`` [0, 1], ``("crop",)`` [0, 2..6], ``("flip", "crop")``
[0..11]. A centre crop of an odd margin keeps the extra pixel on the right/bottom, as
``CenterCrop`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flextok_jax.data.transforms import CenterCrop, ResizeShorterSide, ScaleToSymmetricRange

AUGMENTATIONS = ("flip", "crop")
CROP_RANGE = 1.1
_CROPS = ("crop_center", "crop_top_left", "crop_top_right", "crop_bottom_left", "crop_bottom_right")
VIEW_NAMES = ("center", "center_flip", *_CROPS, *(f"{c}_flip" for c in _CROPS))


def view_ids(augment: Sequence[str]) -> tuple[int, ...]:
    """The view ids a run with ``augment`` (a subset of ``AUGMENTATIONS``) writes per image."""
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; expected a subset of {AUGMENTATIONS}")
    flip, crop = "flip" in augment, "crop" in augment
    ids = [0] + ([1] if flip else [])
    if crop:
        ids += list(range(2, 7)) + (list(range(7, 12)) if flip else [])
    return tuple(ids)


def _crops(square: np.ndarray, size: int) -> list[np.ndarray]:
    """The five S x S crops (centre, then corners) of a square uint8 image, in ``_CROPS`` order."""
    edge = square.shape[0] - size
    corners = [(0, 0), (0, edge), (edge, 0), (edge, edge)]
    return [CenterCrop(size).transform(square)] + [square[t : t + size, l : l + size] for t, l in corners]


def render_views(image: np.ndarray, image_size: int, ids: Sequence[int]) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [len(ids), S, S, 3] in [-1, 1], view ``ids[i]`` at row i."""
    s = int(image_size)
    views: dict[int, np.ndarray] = {0: CenterCrop(s).transform(ResizeShorterSide(s).transform(image))}
    if any(i >= 2 for i in ids):
        c = int(CROP_RANGE * s)
        square = CenterCrop(c).transform(ResizeShorterSide(c).transform(image))
        views.update(enumerate(_crops(square, s), start=2))
    for i in list(views):
        views[i + (1 if i == 0 else 5)] = views[i][:, ::-1]
    scale = ScaleToSymmetricRange()
    return np.stack([scale.transform(views[i]) for i in ids])
