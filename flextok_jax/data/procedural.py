"""Deterministic synthetic RGB pictures, generated from their index.

Each picture layers structure at several scales so a coarse-to-fine tokenizer
has something to learn at every token budget: a smooth two-colour gradient
(global colour/layout), sinusoid stripes (mid frequencies), soft-edged discs and
rectangles of random colours (objects, edges), some with a fine stripe texture
(high frequencies).
"""

from __future__ import annotations

import math

import numpy as np

NUM_CLASSES = 5  # label = number of shapes - 1


class ProceduralImageSource:
    """Random-access source of procedural images: `{"image": uint8 [S,S,3], "label": int32}`.

    The picture for `index` depends only on `(seed, index, image_size)`, so the
    same index always gives an identical image. `label` is the number of shapes
    minus one (0..4).
    """

    def __init__(self, num_images: int, image_size: int, seed: int = 0) -> None:
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self._num_images = int(num_images)
        self._image_size = int(image_size)
        self._seed = int(seed)
        # Pixel-centre coordinates in [0, 1]; shared by all renders.
        c = (np.arange(self._image_size, dtype=np.float32) + 0.5) / self._image_size
        self._y, self._x = np.meshgrid(c, c, indexing="ij")

    def __len__(self) -> int:
        return self._num_images

    def __repr__(self) -> str:
        return (
            f"ProceduralImageSource(num_images={self._num_images}, "
            f"image_size={self._image_size}, seed={self._seed})"
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._num_images:
            raise IndexError(f"index {index} out of range for {self!r}")
        # A SeedSequence keyed on (seed, index) gives independent streams per
        # image, so rendering order or worker split cannot change a picture.
        rng = np.random.default_rng([self._seed, index])
        image, num_shapes = self._render(rng)
        return {"image": image, "label": np.int32(num_shapes - 1)}

    def _render(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        x, y = self._x, self._y
        px = 1.0 / self._image_size

        def uniform(lo: float, hi: float, n: int = 1) -> list[float]:
            # Python floats, so that float32 pixel arrays stay float32 (NEP 50).
            return [float(v) for v in rng.uniform(lo, hi, size=n)]

        # Background: linear or radial blend between two colours.
        c0, c1 = rng.uniform(0.0, 1.0, size=(2, 3)).astype(np.float32)
        if rng.random() < 0.6:
            (angle,) = uniform(0.0, 2.0 * math.pi)
            t = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) + 0.5
        else:
            cx, cy = uniform(0.2, 0.8, 2)
            t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / 0.8
        t = np.clip(t, 0.0, 1.0)[..., None]
        img = c0 * (1.0 - t) + c1 * t

        # Stripes: additive sinusoid, 1-12 periods across the picture.
        if rng.random() < 0.7:
            (angle,) = uniform(0.0, math.pi)
            (freq,) = uniform(1.0, 12.0)
            (phase,) = uniform(0.0, 2.0 * math.pi)
            (amp,) = uniform(0.05, 0.25)
            tint = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
            u = x * math.cos(angle) + y * math.sin(angle)
            img = img + (amp * np.sin(2.0 * math.pi * freq * u + phase))[..., None] * tint

        num_shapes = int(rng.integers(1, NUM_CLASSES + 1))
        for _ in range(num_shapes):
            cx, cy = uniform(0.1, 0.9, 2)
            # Softness from about one pixel (sharp edge) to a blurry blob.
            (softness,) = uniform(0.5 * px, 6.0 * px)
            if rng.random() < 0.5:
                (r,) = uniform(0.05, 0.3)
                dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r
            else:
                hw, hh = uniform(0.05, 0.3, 2)
                (angle,) = uniform(0.0, math.pi)
                ca, sa = math.cos(angle), math.sin(angle)
                dx, dy = x - cx, y - cy
                u, v = np.abs(dx * ca + dy * sa) - hw, np.abs(-dx * sa + dy * ca) - hh
                # Signed distance to a rotated box.
                dist = np.sqrt(np.maximum(u, 0) ** 2 + np.maximum(v, 0) ** 2) + np.minimum(
                    np.maximum(u, v), 0
                )
            alpha = (1.0 / (1.0 + np.exp(np.clip(dist / softness, -30, 30))))[..., None]
            alpha = alpha * uniform(0.6, 1.0)[0]
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
            fill = np.broadcast_to(colour, img.shape)
            if rng.random() < 0.4:
                # Fine texture near the Nyquist limit (2-4 px period).
                (freq,) = uniform(0.25 / px, 0.5 / px)
                (angle,) = uniform(0.0, math.pi)
                u = x * math.cos(angle) + y * math.sin(angle)
                fill = fill * (0.75 + 0.25 * np.sin(2.0 * math.pi * freq * u))[..., None]
            img = img * (1.0 - alpha) + fill * alpha

        image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        return image, num_shapes
