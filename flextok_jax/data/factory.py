"""Build a random-access source from a `config.data` ConfigDict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from flextok_jax.data.fashion_mnist import DEFAULT_ROOT, FashionMnistSource
from flextok_jax.data.image_folder import build_image_folder_dataset
from flextok_jax.data.procedural import ProceduralImageSource
from flextok_jax.data.tfds_sources import tfds_source

SOURCES = ("procedural", "fashion_mnist", "image_folder", "tfds")


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
