"""Fashion-MNIST from the Debian/Ubuntu `dataset-fashion-mnist` package (IDX files)."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import threading

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type code 0x08 is unsigned byte, the only one these files use.
_IDX_UBYTE = 0x08


def _resolve(root: pathlib.Path, stem: str) -> pathlib.Path:
    """Finds `stem` or `stem.gz` under `root`."""
    for name in (stem + ".gz", stem):
        path = root / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {root / stem}(.gz) not found. Install it with "
        f"`apt-get install {APT_PACKAGE}` (puts the files in {DEFAULT_ROOT}) "
        f"or pass root= pointing at a folder with the IDX files."
    )


def _open(path: pathlib.Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_header(f, path: pathlib.Path) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != _IDX_UBYTE:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic!r})")
    ndim = magic[3]
    return struct.unpack(f">{ndim}I", f.read(4 * ndim))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an unsigned-byte IDX file (optionally gzipped) into a uint8 array."""
    path = pathlib.Path(path)
    with _open(path) as f:
        shape = _read_header(f, path)
        data = f.read()
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), found {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


class FashionMnistSource:
    """Random-access Fashion-MNIST: `{"image": uint8 [28,28,3], "label": int32}`.

    Grey images are repeated over 3 channels so the pipeline sees RGB like every
    other source. Arrays are read lazily on first access and are not pickled, so
    grain worker processes each load their own copy instead of receiving ~47 MB
    through a pipe.
    """

    def __init__(self, split: str = "train", root: str | os.PathLike = DEFAULT_ROOT) -> None:
        if split not in _FILES:
            raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_FILES)}")
        self._split = split
        self._root = pathlib.Path(root)
        image_stem, label_stem = _FILES[split]
        self._image_path = _resolve(self._root, image_stem)
        self._label_path = _resolve(self._root, label_stem)
        with _open(self._image_path) as f:
            self._len = _read_header(f, self._image_path)[0]
        self._lock = threading.Lock()
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = state["_labels"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"FashionMnistSource(split={self._split!r}, root={str(self._root)!r})"

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # grain reads with many threads; decompress once
            if self._images is None:
                images = read_idx(self._image_path)
                labels = read_idx(self._label_path)
                if images.ndim != 3 or labels.shape != images.shape[:1]:
                    raise ValueError(
                        f"inconsistent Fashion-MNIST files: images {images.shape} "
                        f"({self._image_path}), labels {labels.shape} ({self._label_path})"
                    )
                self._labels = labels.astype(np.int32)
                self._images = images
        return self._images, self._labels

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self!r} of length {self._len}")
        images, labels = self._load()
        image = np.repeat(images[index][..., None], 3, axis=-1)
        return {"image": image, "label": labels[index]}
