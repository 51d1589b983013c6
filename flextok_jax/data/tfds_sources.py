"""Random-access sources for already prepared tfds datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds


def tfds_source(
    name: str, split: str, data_dir: str | os.PathLike | None = None
) -> Sequence[dict[str, Any]]:
    """`tfds.data_source` for a dataset already prepared in array_record format.

    Never downloads or generates: training hosts usually have no internet, and
    a silent multi-hour preparation inside a training job is worse than an error.
    Records are whatever the dataset defines; the pipeline reads `"image"`
    (uint8 [H,W,C] or encoded bytes) and, if present, `"label"`.
    """
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    if not builder.is_prepared():
        # tfds' own error here is about file formats, which hides the real cause.
        raise FileNotFoundError(
            f"tfds dataset {name!r} is not prepared under {builder.data_dir}; build it first, e.g. "
            f"`tfds build {name.split('/')[0]} --file_format=array_record"
            + (f" --data_dir={data_dir}`" if data_dir else "`")
        )
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False)
