"""Input pipeline: random-access image sources, grain transforms, sharded batches."""

from flextok_jax.data.factory import SOURCES, get_source
from flextok_jax.data.fashion_mnist import FashionMnistSource, read_idx
from flextok_jax.data.image_folder import ImageFolderBuilder, build_image_folder_dataset
from flextok_jax.data.pipeline import make_dataset, per_process_batch_size
from flextok_jax.data.procedural import ProceduralImageSource
from flextok_jax.data.sharding import batch_sharding, to_global_batch
from flextok_jax.data.skips import SKIPPED_RECORDS, DropSkipped, SkipCounter, SkippedRecord
from flextok_jax.data.tfds_sources import tfds_source
from flextok_jax.data.transforms import (
    CenterCrop,
    DecodeImage,
    LoadRecord,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShorterSide,
    ScaleToSymmetricRange,
)

__all__ = [
    "SKIPPED_RECORDS",
    "SOURCES",
    "CenterCrop",
    "DecodeImage",
    "DropSkipped",
    "FashionMnistSource",
    "ImageFolderBuilder",
    "LoadRecord",
    "ProceduralImageSource",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ResizeShorterSide",
    "ScaleToSymmetricRange",
    "SkipCounter",
    "SkippedRecord",
    "batch_sharding",
    "build_image_folder_dataset",
    "get_source",
    "make_dataset",
    "per_process_batch_size",
    "read_idx",
    "tfds_source",
    "to_global_batch",
]
