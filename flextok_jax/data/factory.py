"""Build a random-access source from a `config.data` ConfigDict."""

from __future__ import annotations

import argparse

from collections.abc import Sequence
from typing import Any

import ml_collections

from flextok_jax.data.fashion_mnist import DEFAULT_ROOT, FashionMnistSource
from flextok_jax.data.image_folder import build_image_folder_dataset
from flextok_jax.data.procedural import ProceduralImageSource
from flextok_jax.data.tfds_sources import tfds_source

SOURCES = ("procedural", "fashion_mnist", "image_folder", "tfds")
# The command-line flags that name a source (``add_source_arguments``) = ``get_source`` fields.
SOURCE_FLAGS = ("source", "split", "folder", "data_dir", "name")


def add_source_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--source / --split / --folder / --data_dir / --name on ``parser`` (the commands that read
    a training or evaluation source share them)."""
    parser.add_argument("--source", required=required, choices=SOURCES)
    parser.add_argument("--split", help="fashion_mnist: train|test; image_folder: tfds slice; tfds: required")
    parser.add_argument("--folder", help="image_folder: the folder of images")
    parser.add_argument("--data_dir", help="image_folder / tfds: the tfds data_dir")
    parser.add_argument("--name", help="tfds: dataset name")


class FirstImages:
    """The first ``num_images`` records of a random-access source (all of them when it has fewer).

    Its repr names the source and the count, so a resumed ``tokenize_dataset`` sees the same plan.
    """

    def __init__(self, source: Sequence[dict[str, Any]], num_images: int) -> None:
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.source = source
        self._len = min(int(num_images), len(source))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self!r}")
        return self.source[index]

    def __repr__(self) -> str:
        return f"{self.source!r}[:{self._len}]"


def _require(config: ml_collections.ConfigDict, field: str) -> Any:
    value = config.get(field)
    if value is None or value == "":
        raise ValueError(f"config.data.source={config.source!r} needs config.data.{field}")
    return value


def get_source(config: ml_collections.ConfigDict) -> Sequence[dict[str, Any]]:
    """`config.source` in {procedural, fashion_mnist, image_folder, tfds} -> data source.

    Fields read: procedural: num_images, image_size, seed; fashion_mnist: split
    (and optional root); image_folder: folder, data_dir (and optional split,
    default "train"); tfds: name, split, data_dir.
    """
    source = config.get("source")
    if source == "procedural":
        return ProceduralImageSource(
            num_images=_require(config, "num_images"),
            image_size=_require(config, "image_size"),
            seed=config.get("seed", 0),
        )
    if source == "fashion_mnist":
        return FashionMnistSource(split=config.get("split") or "train", root=config.get("root") or DEFAULT_ROOT)
    if source == "image_folder":
        return build_image_folder_dataset(
            _require(config, "folder"), _require(config, "data_dir"), split=config.get("split") or "train"
        )
    if source == "tfds":
        return tfds_source(_require(config, "name"), _require(config, "split"), config.get("data_dir") or None)
    raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES}")
