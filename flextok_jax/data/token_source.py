"""Reading token datasets (``token_dataset.tokenize_dataset``): a random-access source and batches."""

from __future__ import annotations

import bisect
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordReader

from flextok_jax.data import token_records as R
from flextok_jax.data.pipeline import per_process_batch_size
from flextok_jax.data.token_dataset import process_slot

_REQUIRED_KEYS = ("format", "format_version", "vocab_size", "num_tokens", "shards", "num_records")


@dataclasses.dataclass(frozen=True)
class _Shard:
    """What ``ArrayRecordDataSource`` needs to open a shard without reading its footer again."""

    filename: str
    skip: int
    take: int
    examples_in_shard: int


def _manifest_path(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path / R.MANIFEST_NAME if path.is_dir() else path


def _validated_manifest(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        plan = path.with_name(R.PLAN_NAME)
        hint = f" ({plan} exists: the tokenization is unfinished; run it again to complete it)" if plan.exists() else ""
        raise FileNotFoundError(f"no token dataset manifest at {path}{hint}")
    manifest = R.read_json(path)
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{path}: manifest lacks {missing}")
    if manifest["format"] != R.FORMAT or manifest["format_version"] != R.FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {manifest['format']!r} version {manifest['format_version']}, "
            f"expected {R.FORMAT!r} version {R.FORMAT_VERSION}"
        )
    return manifest


def _open_shard(path: pathlib.Path, expected: int) -> None:
    """Raises ValueError naming the shard unless it opens and holds ``expected`` records."""
    if not path.is_file():
        raise FileNotFoundError(f"token shard {path} listed in the manifest does not exist")
    try:
        reader = ArrayRecordReader(os.fspath(path))
        found = reader.num_records()
        reader.close()
    except Exception as e:  # noqa: BLE001 - any reader failure means the file is unusable
        raise ValueError(f"token shard {path} is corrupt or truncated ({type(e).__name__}: {e})") from e
    if found != expected:
        raise ValueError(f"token shard {path} holds {found} records, the manifest says {expected} (truncated?)")


class TokenDataSource:
    """Random-access token records: ``{"tokens": int32 [n], "label": int32, "index": int64,
    "augmentation": int32, "length": int32, "caption": str}``, in manifest (shard, then record) order.

    ``path`` is a token dataset folder or its ``manifest.json``. Every shard is opened once here
    to check that it holds the number of records the manifest lists.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _manifest_path(path)
        self.manifest = _validated_manifest(self.path)
        self.num_tokens = int(self.manifest["num_tokens"])
        self.vocab_size = int(self.manifest["vocab_size"])
        folder = self.path.parent
        shards = [s for s in self.manifest["shards"] if s["num_records"] > 0]
        for s in shards:
            _open_shard(folder / s["file"], s["num_records"])
        self._files = [os.fspath(folder / s["file"]) for s in shards]
        counts = [int(s["num_records"]) for s in shards]
        self._ends = list(np.cumsum(counts))
        self._len = int(sum(counts))
        if self._len != self.manifest["num_records"]:
            raise ValueError(f"{self.path}: shards hold {self._len} records, num_records says {self.manifest['num_records']}")
        if self._len == 0:
            raise ValueError(f"{self.path}: the token dataset holds no records")
        self._records = ArrayRecordDataSource([_Shard(f, 0, n, n) for f, n in zip(self._files, counts)])
        self._record_lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"TokenDataSource({os.fspath(self.path)!r}, records={self._len}, n={self.num_tokens})"

    def _where(self, index: int) -> str:
        shard = bisect.bisect_right(self._ends, index)
        first = self._ends[shard - 1] if shard else 0
        return f"token shard {self._files[shard]} record {index - first}"

    def read_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Records ``indices`` -> ``{"tokens": int32 [B, n], "label": int32 [B], "index": int64 [B],
        "augmentation": int32 [B], "length": int32 [B], "caption": object [B] of str ("" when the
        image had none)}``, decoded in one go."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self._len:
                raise IndexError(f"index {i} out of range for {self!r}")
        try:
            data = self._records.__getitems__(indices)
        except Exception:  # noqa: BLE001 - find and name the shard that failed
            for i in indices:
                try:
                    self._records[i]
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"{self._where(i)} is unreadable: {type(e).__name__}: {e}") from e
            raise
        rows, captions = R.decode_records(data, self.num_tokens, lambda j: self._where(indices[j]))
        tokens = rows["tokens"].astype(np.int32)
        row_max = tokens.max(axis=1, initial=0)
        if (row_max >= self.vocab_size).any():
            j = int(np.argmax(row_max))
            raise ValueError(f"{self._where(indices[j])}: token id {row_max[j]} >= vocab_size {self.vocab_size}")
        return {"tokens": tokens, "label": rows["label"].astype(np.int32), "index": rows["index"].astype(np.int64),
                "augmentation": rows["augmentation"].astype(np.int32), "length": rows["length"].astype(np.int32),
                "caption": np.asarray(captions, dtype=object)}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """One record: tokens int32 [n], label int32, index int64, augmentation int32 (view id),
        length int32 (its own number of tokens), caption str."""
        return {k: v[0] for k, v in self.read_batch([index]).items()}

    def record_lengths(self, chunk: int = 65_536) -> np.ndarray:
        """int32 [len(self)]: every record's ``length``, read once (in chunks) and kept."""
        if self._record_lengths is None:
            self._record_lengths = np.concatenate([
                self.read_batch(range(a, min(a + chunk, self._len)))["length"] for a in range(0, self._len, chunk)])
        return self._record_lengths


def check_compatible(manifest_or_source: TokenDataSource | Mapping[str, Any] | str | os.PathLike,
                     vocab_size: int, num_tokens: int) -> None:
    """ValueError naming the token file and both values unless it holds ``num_tokens`` ids per record
    from a ``vocab_size`` vocabulary (what a generator was built for)."""
    if isinstance(manifest_or_source, TokenDataSource):
        manifest, where = manifest_or_source.manifest, os.fspath(manifest_or_source.path)
    elif isinstance(manifest_or_source, Mapping):
        manifest, where = manifest_or_source, "the given token manifest"
    else:
        path = _manifest_path(manifest_or_source)
        manifest, where = _validated_manifest(path), os.fspath(path)
    for name, expected in (("vocab_size", vocab_size), ("num_tokens", num_tokens)):
        if int(manifest[name]) != int(expected):
            raise ValueError(f"{where}: tokens have {name} {manifest[name]}, the model expects {expected}")


class _ReadBatch(grain.transforms.Map):
    """Record indices [B] -> ``{key: [B, ...]}`` for ``keys`` of ``TokenDataSource.read_batch``."""

    def __init__(self, source: TokenDataSource, keys: Sequence[str]) -> None:
        self._source = source
        self._keys = tuple(keys)

    def map(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        batch = self._source.read_batch(indices)
        return {k: batch[k] for k in self._keys}


def make_token_dataset(
    source: TokenDataSource,
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    keys: Sequence[str] = ("tokens", "label"),
) -> grain.IterDataset:
    """Batches ``{"tokens": int32 [B, n], "label": int32 [B]}`` (``keys`` of ``read_batch``, e.g.
    also "caption") for this process, B = global_batch_size // process_count.

    As ``pipeline.make_dataset``: one seeded global shuffle of the records (reshuffled each
    epoch), then process p takes positions p, p + process_count, ...; ``iter(ds)`` is a grain
    iterator whose ``get_state`` / ``set_state`` resume exactly; the last partial batch of a
    finite run is dropped. Each batch is read with one ``read_batch``; ``read_threads`` batches
    are read ahead, by ``worker_count`` processes if positive.
    """
    process_index, process_count = process_slot(process_index, process_count)
    batch_size = per_process_batch_size(global_batch_size, process_count)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    # Shuffle and split record indices, then read each batch with one call: token records are
    # tiny, and per-record reads through grain cost ten times more than the reads themselves.
    ds = grain.MapDataset.range(len(source)).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)[process_index::process_count].batch(batch_size, drop_remainder=True)
    ds = ds.map(_ReadBatch(source, keys))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * max(read_threads, 1)))
    if worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it
