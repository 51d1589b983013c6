"""Folder of images -> tfds array_record dataset -> random-access data source.

Works without TensorFlow: generation validates and (where needed) re-encodes
images with PIL, tfds writes array_record shards, and `as_data_source` decodes
records with PIL/NumPy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Formats whose RGB files tfds stores byte-for-byte (no re-encode, no bloat).
_PASSTHROUGH_FORMATS = frozenset({"JPEG", "PNG"})


def image_files(folder: str | os.PathLike, recursive: bool = True) -> list[pathlib.Path]:
    """Image files (by extension, ``IMAGE_EXTENSIONS``) in ``folder``, sorted; hidden files and
    folders (``.ipynb_checkpoints``, ``._*`` resource forks, ...) are left out."""
    folder = pathlib.Path(folder)
    return sorted(
        p
        for p in (folder.rglob("*") if recursive else folder.iterdir())
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _list_images(folder: pathlib.Path) -> tuple[list[str], list[tuple[pathlib.Path, int]]]:
    """Returns (class names, [(file, label)]); classes are the sorted subfolders.

    A flat folder (no subfolder holding images) is a single class named after it.
    """
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(d.name, image_files(d)) for d in subdirs]
    per_class = [(name, files) for name, files in per_class if files]
    if per_class:
        loose = image_files(folder, recursive=False)
        if loose:
            logger.warning(
                "%s has class subfolders; ignoring %d image(s) directly inside it, e.g. %s",
                folder, len(loose), loose[0],
            )
        names = [name for name, _ in per_class]
        return names, [(p, label) for label, (_, files) in enumerate(per_class) for p in files]
    files = image_files(folder)
    return [folder.name or "images"], [(p, 0) for p in files]


CAPTIONS_FILE = "captions.jsonl"


def read_captions(folder: pathlib.Path, files: Sequence[tuple[pathlib.Path, int]]) -> list[str]:
    """Each image's caption: from FOLDER/captions.jsonl (one JSON object per line, {"path": the
    image's path relative to FOLDER, "caption": text}) if it exists, else from a sidecar text
    file beside the image (``cat.jpg`` -> ``cat.txt``, UTF-8); "" for an image without one.
    ValueError naming the file and line for a malformed captions.jsonl."""
    jsonl = folder / CAPTIONS_FILE
    if jsonl.exists():
        table: dict[str, str] = {}
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{jsonl} line {n}: not JSON ({e})") from e
            if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not isinstance(row.get("caption"), str):
                raise ValueError(f'{jsonl} line {n}: expected {{"path": str, "caption": str}}, got {line[:80]!r}')
            table[pathlib.PurePosixPath(row["path"]).as_posix()] = row["caption"].strip()
        return [table.get(path.relative_to(folder).as_posix(), "") for path, _ in files]
    captions = []
    for path, _ in files:
        sidecar = path.with_suffix(".txt")
        captions.append(sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else "")
    return captions


def _config_name(folder: pathlib.Path, files: Sequence[tuple[pathlib.Path, int]]) -> str:
    # Several folders can share one data_dir, and a folder can change between
    # runs: key the config on the absolute path and the files' names, sizes and
    # mtimes (and those of their captions) so a stale build is never reused.
    h = hashlib.sha1(str(folder).encode())
    captions = [folder / CAPTIONS_FILE] + [path.with_suffix(".txt") for path, _ in files]
    for path, label in files:
        st = path.stat()
        h.update(f"\0{path.relative_to(folder)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    for path in captions:
        if path.is_file():
            st = path.stat()
            h.update(f"\0{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    digest = h.hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in folder.name.lower()) or "root"
    return f"{stem}_{digest}"


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder):
    """tfds builder for a folder of images (one subfolder per class, or flat).

    Everything goes into one split, `"train"`; use tfds slicing
    (`"train[:90%]"`) for a held-out part. Records are
    `{"image": uint8 [H,W,3], "label": int, "file_name": str, "caption": str}` (captions from
    `captions.jsonl` or sidecar `.txt` files, ``read_captions``; "" without). Files PIL cannot
    decode are logged, counted in `num_skipped` and left out; the count is also
    stored in the dataset metadata (`info.metadata["num_skipped"]`). The config
    name hashes the folder's path and file list (names, sizes, mtimes), so a
    changed folder is rebuilt rather than served stale.
    """

    name = "flextok_image_folder"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Captions (captions.jsonl or sidecar .txt files)."}

    def __init__(self, *, folder: str | os.PathLike, **kwargs: Any) -> None:
        self._folder = pathlib.Path(folder).resolve()
        if not self._folder.is_dir():
            raise FileNotFoundError(f"image folder {self._folder} does not exist")
        self._class_names, self._files = _list_images(self._folder)
        if not self._files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {self._folder}")
        self._captions = read_captions(self._folder, self._files)  # a malformed captions.jsonl fails here
        self.num_skipped = 0
        kwargs.setdefault("file_format", "array_record")
        kwargs.setdefault(
            "config",
            tfds.core.BuilderConfig(
                name=_config_name(self._folder, self._files), description=f"Images from {self._folder}"
            ),
        )
        super().__init__(**kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # tfds re-runs __init__ from the recorded kwargs on unpickle, which do
        # not include ours.
        return {"_original_state": {**self._original_state, "folder": self._folder}}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images from {self._folder}",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=self._class_names),
                    "file_name": tfds.features.Text(),
                    "caption": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(self._files)}

    def _generate_examples(
        self, files: Sequence[tuple[pathlib.Path, int]]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.num_skipped = 0
        for (path, label), caption in zip(files, self._captions):
            rel = str(path.relative_to(self._folder))
            try:
                image = _encode_rgb(path)
            except Exception as e:  # noqa: BLE001 - any decoder failure means "unusable"
                self.num_skipped += 1
                logger.warning("Skipping undecodable image %s: %s: %s", path, type(e).__name__, e)
                continue
            yield rel, {"image": image, "label": label, "file_name": rel, "caption": caption}
        self.info.metadata["num_skipped"] = self.num_skipped
        if self.num_skipped:
            logger.warning("Skipped %d undecodable image(s) under %s", self.num_skipped, self._folder)


def _encode_rgb(path: pathlib.Path) -> bytes:
    """Returns bytes that decode to an RGB image; raises if `path` is not one."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # full decode: catches truncated files, not only bad headers
        if im.format in _PASSTHROUGH_FORMATS and im.mode == "RGB":
            return data
        if im.width == 0 or im.height == 0:
            raise ValueError(f"empty image {im.size}")
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()


def build_image_folder_dataset(
    folder: str | os.PathLike, data_dir: str | os.PathLike, split: str = "train"
) -> Sequence[dict[str, Any]]:
    """Prepares (once) the array_record dataset for `folder` in `data_dir` and
    returns its random-access source of `{"image": uint8 [H,W,3], "label", "file_name", "caption"}`."""
    builder = ImageFolderBuilder(folder=folder, data_dir=data_dir)
    builder.download_and_prepare()
    # Read through a directory-only builder: it pickles as just a path, so grain
    # worker processes neither need the image folder nor rescan it.
    return tfds.builder_from_directory(builder.data_dir).as_data_source(split)
