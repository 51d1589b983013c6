"""A folder of small photo crops from a handful of large photos, split by photo.

    python -m flextok_jax.benchmarks.photo_crops --photos PHOTO_DIR --out CROPS \\
        --size 32 --train_crops 2500 --test_crops 250 --test chelsea coffee gravel rocket

Writes CROPS/train/<photo>_<i>.png and CROPS/test/<photo>_<i>.png: square crops of a random side
(log-uniform between ``size`` and the photo's short side, so from single-pixel detail to the whole
scene) at a random place, resized to ``size`` px (Lanczos), grey photos replicated to RGB. The
photos named by ``--test`` give only test crops, so the test crops show scenes the tokenizer never
saw. It is how the tokens-saved benchmark gets a folder of photos at the tiny tokenizer's 32 px
(``python -m flextok_jax.benchmarks.tokens_saved``); any folder of photos works there.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
from PIL import Image

from flextok_jax.data.image_folder import image_files


def random_crops(photo: Image.Image, count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` RGB crops of ``size`` x ``size`` px: a square of side log-uniform in [size,
    short side] at a uniform position, resized with Lanczos."""
    photo = photo.convert("RGB")
    w, h = photo.size
    short = min(w, h)
    if short < size:
        raise ValueError(f"a {w}x{h} photo is smaller than the {size} px crops")
    sides = np.exp(rng.uniform(np.log(size), np.log(short), count)).astype(int)
    crops = []
    for side in sides:
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crops.append(photo.resize((size, size), Image.LANCZOS, box=(x, y, x + side, y + side)))
    return crops


def write_photo_crops(photo_dir: str, out: str, size: int, train_crops: int, test_crops: int,
                      test_photos: Sequence[str], seed: int = 0) -> dict[str, int]:
    """Crops of every photo in ``photo_dir`` (``random_crops``): ``train_crops`` each into
    OUT/train, except the photos whose file stem is in ``test_photos``, which give ``test_crops``
    each into OUT/test. Returns {"train": count, "test": count}."""
    photos = image_files(photo_dir, recursive=False)
    stems = {p.stem for p in photos}
    missing = sorted(set(test_photos) - stems)
    if missing:
        raise ValueError(f"--test names photos not in {photo_dir}: {missing} (it has {sorted(stems)})")
    if not set(stems) - set(test_photos):
        raise ValueError(f"every photo of {photo_dir} is a test photo; none is left to train on")
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for path in photos:
        split = "test" if path.stem in test_photos else "train"
        folder = os.path.join(out, split)
        os.makedirs(folder, exist_ok=True)
        with Image.open(path) as photo:
            crops = random_crops(photo, test_crops if split == "test" else train_crops, size, rng)
        for i, crop in enumerate(crops):
            crop.save(os.path.join(folder, f"{path.stem}_{i:05d}.png"))
        counts[split] += len(crops)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flextok_jax.benchmarks.photo_crops", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="folder of photos (any size, at least --size px)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--train_crops", type=int, default=2500, help="crops per training photo")
    ap.add_argument("--test_crops", type=int, default=250, help="crops per test photo")
    ap.add_argument("--test", nargs="+", required=True, help="file stems of the photos kept for testing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = write_photo_crops(args.photos, args.out, args.size, args.train_crops, args.test_crops, args.test, args.seed)
    print(f"{counts['train']} training crops in {args.out}/train, {counts['test']} test crops in {args.out}/test")


if __name__ == "__main__":
    main()
