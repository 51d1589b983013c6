"""Per-record grain transforms: load, decode, resize/crop, flip, scale.

Every transform passes `SkippedRecord` markers through untouched, and the
loading/decoding steps turn unusable records into markers instead of raising
(see `skips.py`), so one bad file never stops a run.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from flextok_jax.data.skips import SkippedRecord, is_skipped

Record = dict[str, Any]


def _file_name(record: Any) -> str | None:
    name = record.get("file_name") if isinstance(record, dict) else None
    if isinstance(name, (bytes, np.bytes_)):
        name = bytes(name).decode("utf-8", "replace")
    return None if name is None else str(name)


class LoadRecord(grain.transforms.Map):
    """Source index -> source record, tagged with `"index"`; failures become markers."""

    def __init__(self, source: Sequence[Record]) -> None:
        self._source = source

    def map(self, index: int) -> Record | SkippedRecord:
        index = int(index)
        try:
            record = self._source[index]
        except Exception as e:  # noqa: BLE001 - e.g. a tfds source failing to decode
            return SkippedRecord(index, f"loading failed: {type(e).__name__}: {e}")
        if not isinstance(record, dict) or "image" not in record:
            return SkippedRecord(index, f"expected a dict with an 'image' key, got {type(record).__name__}")
        return {**record, "index": index}


def _to_rgb_array(image: Any) -> np.ndarray:
    """Encoded bytes or uint8 [H,W], [H,W,1|3|4] -> uint8 [H,W,3]; ValueError if unusable."""
    if isinstance(image, np.ndarray) and image.dtype == object and image.size == 1:
        image = image.item()
    if isinstance(image, (bytes, np.bytes_, bytearray)):
        with Image.open(io.BytesIO(bytes(image))) as im:
            im.load()
            image = np.asarray(im.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {image.dtype} (want uint8)")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image has rank {image.ndim} (shape {image.shape}), want [H,W,C]")
    channels = image.shape[-1]
    if channels == 1:
        image = np.repeat(image, 3, axis=-1)
    elif channels == 4:
        image = image[..., :3]  # drop alpha
    elif channels != 3:
        raise ValueError(f"image has {channels} channels (shape {image.shape}), want 1, 3 or 4")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    return image


class DecodeImage(grain.transforms.Map):
    """Record -> `{"image": uint8 [H,W,3], "label": int32}`.

    Decodes encoded bytes; grey and RGBA become RGB. Records without `"label"`
    get label 0 (a tokenizer does not need one). Anything else unusable
    (corrupt bytes, wrong rank/channels/dtype) becomes a `SkippedRecord`.
    """

    def map(self, record: Record | SkippedRecord) -> Record | SkippedRecord:
        if is_skipped(record):
            return record
        index = int(record.get("index", -1))
        try:
            image = _to_rgb_array(record["image"])
            label = np.int32(record.get("label", 0))
        except Exception as e:  # noqa: BLE001 - any decode failure means "unusable"
            return SkippedRecord(index, f"{type(e).__name__}: {e}", _file_name(record))
        return {"image": image, "label": label}


class _ImageMap(grain.transforms.Map):
    """Replaces the record's ``"image"`` by ``transform(image)``; markers pass through."""

    def transform(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def map(self, record: Record | SkippedRecord) -> Record | SkippedRecord:
        if is_skipped(record):
            return record
        return {**record, "image": self.transform(record["image"])}


class _RandomImageMap(grain.transforms.RandomMap):
    """Replaces the record's ``"image"`` by ``transform(image, rng)``; markers pass through."""

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def random_map(self, record: Record | SkippedRecord, rng: np.random.Generator) -> Record | SkippedRecord:
        if is_skipped(record):
            return record
        return {**record, "image": self.transform(record["image"], rng)}


class ResizeShorterSide(_ImageMap):
    """uint8 [H,W,3] -> uint8 [H',W',3] with min(H',W') == size (bicubic, aspect kept)."""

    def __init__(self, size: int) -> None:
        self._size = int(size)

    def transform(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if min(h, w) == self._size:
            return image
        scale = self._size / min(h, w)
        new_h, new_w = max(self._size, round(h * scale)), max(self._size, round(w * scale))
        # PIL's bicubic resize antialiases when shrinking (filter support scales).
        return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))


def _crop(image: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    if image.shape[0] < size or image.shape[1] < size:
        raise ValueError(f"image {image.shape} smaller than crop {size}; resize first")
    return np.ascontiguousarray(image[top : top + size, left : left + size])


class CenterCrop(_ImageMap):
    """uint8 [H,W,3] (H,W >= size) -> uint8 [size,size,3], centred."""

    def __init__(self, size: int) -> None:
        self._size = int(size)

    def transform(self, image: np.ndarray) -> np.ndarray:
        s = self._size
        return _crop(image, s, (image.shape[0] - s) // 2, (image.shape[1] - s) // 2)


class RandomCrop(_RandomImageMap):
    """uint8 [H,W,3] (H,W >= size) -> uint8 [size,size,3] at a uniform random offset."""

    def __init__(self, size: int) -> None:
        self._size = int(size)

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self._size
        top = int(rng.integers(0, max(image.shape[0] - s, 0) + 1))
        left = int(rng.integers(0, max(image.shape[1] - s, 0) + 1))
        return _crop(image, s, top, left)


class RandomHorizontalFlip(_RandomImageMap):
    """Mirrors [H,W,C] images left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self._p = float(p)

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1]) if rng.random() < self._p else image


class ScaleToSymmetricRange(_ImageMap):
    """uint8 image -> float32 in [-1, 1] (0 -> -1, 255 -> 1); any shape."""

    def transform(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)


def prepare_eval_image(record: Record, size: int) -> Record | SkippedRecord:
    """One record through decode -> resize shorter side -> centre crop -> [-1, 1], outside grain.

    For evaluation and the command-line tools; returns a ``SkippedRecord`` for unusable input.
    """
    for step in (DecodeImage(), ResizeShorterSide(size), CenterCrop(size), ScaleToSymmetricRange()):
        record = step.map(record)
    return record
