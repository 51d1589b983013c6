"""Tokenize an image source once into array_record shards of token records (stage-2 data).

Layout of ``out_dir``::

    plan.json                                 what this run writes (checked again on resume)
    tokens-00000-of-000NN.array_record        records of ``token_records`` (one per image view)
    tokens-00000-of-000NN.stats.json          that shard's record / skip counts
    manifest.json                             plan + every shard's counts, once all shards exist

Shard s holds every view of source images [s m, (s + 1) m), m = max(1, records_per_shard //
views per image), in index order, so shard contents depend neither on the number of processes
nor on which other shards exist. Each shard is written to a temporary name and renamed when
complete (its stats first): a complete shard is never rewritten and a partial one is never read,
so a killed run is resumed by running it again. Process p writes shards s with s % P == p and
needs no coordination; whichever process completes the last shard writes the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import grain
import jax
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from jax.sharding import Mesh
from tqdm import tqdm

from flextok_jax.data import token_records as R
from flextok_jax.data.skips import DropSkipped, SkipCounter, SkippedRecord, is_skipped
from flextok_jax.data.token_views import VIEW_NAMES, render_views, view_ids
from flextok_jax.data.transforms import DecodeImage, LoadRecord
from flextok_jax.parallel import BATCH_AXES, DEFAULT_RULES, batch_sharding

logger = logging.getLogger(__name__)

DEFAULT_RECORDS_PER_SHARD = 16_384
# One record per chunk, so a random read decodes only its record; token ids are close to
# uniformly distributed and do not compress (zstd saved nothing on 266-token records).
WRITER_OPTIONS = "group_size:1,uncompressed"
# Skipped records named in the manifest (all are counted); the rest are only in the log.
_MAX_LISTED_SKIPS = 1000


class _SkipLog(SkipCounter):
    """A SkipCounter that also keeps every skipped record, for the shard's stats."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[SkippedRecord] = []

    def add(self, record: SkippedRecord) -> None:
        super().add(record)
        self.records.append(record)


def caption_text(value: Any, where: str) -> str:
    """A record's caption feature -> str: text, UTF-8 bytes, or a sequence of them (the first,
    e.g. one of COCO's five captions); ValueError naming ``where`` otherwise."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else (list(value) or "")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: caption is not UTF-8 ({e})") from e
    if not isinstance(value, str):
        raise ValueError(f"{where}: caption must be text, got {type(value).__name__}")
    return value.strip()


class _RenderViews(grain.transforms.Map):
    """A loaded record -> ``{"views": float32 [V, S, S, 3], "label", "index"(, "caption")}``;
    failures -> markers. ``caption_key``: the record's text feature, or None."""

    def __init__(self, image_size: int, ids: Sequence[int], caption_key: str | None = None) -> None:
        self._image_size = int(image_size)
        self._ids = tuple(ids)
        self._decode = DecodeImage()
        self._caption_key = caption_key

    def map(self, record: dict[str, Any] | SkippedRecord) -> dict[str, Any] | SkippedRecord:
        if is_skipped(record):
            return record
        caption = ""
        if self._caption_key is not None:
            if self._caption_key not in record:
                return SkippedRecord(record["index"], f"no caption feature {self._caption_key!r} "
                                                      f"(record keys: {sorted(record)})")
            try:
                caption = caption_text(record[self._caption_key], f"record {record['index']}")
            except ValueError as e:
                return SkippedRecord(record["index"], str(e))
        decoded = self._decode.map(record)
        if is_skipped(decoded):
            return decoded
        views = render_views(decoded["image"], self._image_size, self._ids)
        return {"views": views, "label": decoded["label"], "index": record["index"], "caption": caption}


def shard_ranges(num_images: int, images_per_shard: int) -> list[tuple[int, int]]:
    """[start, stop) source indices of every shard."""
    return [(a, min(a + images_per_shard, num_images)) for a in range(0, num_images, images_per_shard)]


def process_slot(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), jax's where None; ValueError unless 0 <= index < count."""
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    return index, count


def shards_of_process(num_shards: int, process_index: int, process_count: int) -> list[int]:
    """The shards process ``process_index`` of ``process_count`` writes: s % process_count == p."""
    process_index, process_count = process_slot(process_index, process_count)
    return list(range(process_index, num_shards, process_count))


def _source_description(source: Any) -> dict[str, Any]:
    info = getattr(source, "dataset_info", None)  # tfds sources, e.g. a built image folder
    metadata = getattr(info, "metadata", None) or {}
    return {"description": repr(source), "num_images": len(source),
            "skipped_when_built": int(metadata.get("num_skipped", 0))}


def _make_plan(model: Any, source: Any, image_size: int, num_tokens: int, ids: Sequence[int],
               augment: Sequence[str], images_per_shard: int, records_per_shard: int,
               metadata: Mapping[str, Any] | None, quality: dict[str, Any] | None,
               caption_key: str | None) -> dict[str, Any]:
    num_shards = len(shard_ranges(len(source), images_per_shard))
    return {
        "format": R.FORMAT,
        "format_version": R.FORMAT_VERSION,
        "record_layout": R.LAYOUT_DESCRIPTION,
        "vocab_size": int(model.config.vocab_size),
        "num_tokens": int(num_tokens),
        "tokenizer": model.config.to_dict(),
        "image_size": int(image_size),
        "augment": sorted(augment),
        "views": {str(i): VIEW_NAMES[i] for i in ids},
        "views_per_image": len(ids),
        "source": _source_description(source),
        "records_per_shard": int(records_per_shard),
        "images_per_shard": int(images_per_shard),
        "num_shards": num_shards,
        # None: every record's length is num_tokens; else the adaptive target that chose them.
        "quality": quality,
        # The source feature the records' captions come from (None: no captions).
        "caption_key": caption_key,
        "metadata": dict(metadata or {}),
    }


def _check_or_write_plan(out_dir: pathlib.Path, plan: dict[str, Any]) -> None:
    """A resumed run must write exactly what the first run started; the plan records that."""
    path = out_dir / R.PLAN_NAME
    if path.exists():
        old = R.read_json(path)
        # Round-trip through JSON so tuples compare equal to the lists read back.
        new = json.loads(json.dumps(plan))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            details = "; ".join(f"{k}: found {old.get(k)!r}, this run {new.get(k)!r}" for k in diff)
            raise ValueError(f"{out_dir} holds a different tokenization ({path}): {details}. Use a new out_dir.")
        return
    R.write_json_atomic(path, plan)


def _tokenizer(model: Any, params: Any, num_tokens: int, batch_size: int, mesh: Mesh | None,
               quality: dict[str, Any] | None = None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """float32 [B, S, S, 3] numpy -> (ids int32 [B, k], lengths int32 [B]) numpy, batch sharded
    over ``mesh`` if given. Lengths are k, or with ``quality`` ({target, steps, seed}) each
    image's fewest tokens that meet the target (``FlexTok.tokenize_adaptive``)."""

    def tokenize(images: Any) -> tuple[np.ndarray, np.ndarray]:
        if quality is None:
            ids = np.asarray(model.tokenize(params, images, num_tokens=num_tokens))
            return ids, np.full(ids.shape[0], num_tokens, np.int32)
        found = model.tokenize_adaptive(params, images, quality["target"], num_steps=quality["steps"],
                                        seed=quality["seed"])
        return np.asarray(found.ids), np.asarray(found.num_tokens, np.int32)

    if mesh is None:
        return tokenize
    if any(d.process_index != jax.process_index() for d in mesh.devices.flat):
        # A mesh over other processes' devices would make every call a collective that all
        # processes must enter in lockstep; shards are split without coordination instead.
        raise ValueError("tokenize_dataset needs a mesh of this process's devices only (jax.local_devices())")
    sharding = batch_sharding(mesh)
    ways = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if batch_size % ways:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {ways} devices of the mesh's batch axes")

    def tokenize_on_mesh(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            return tokenize(jax.device_put(images, sharding))

    return tokenize_on_mesh


def _padded_batches(elements: Iterator[dict[str, Any]], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Views of consecutive images -> (float32 [batch_size, S, S, 3], number of real rows).

    The last batch is padded with zeros so that one compiled shape serves the whole run.
    """
    pending: list[np.ndarray] = []
    count = 0
    for element in elements:
        pending.append(element["views"])
        count += len(element["views"])
        while count >= batch_size:
            stacked = np.concatenate(pending)
            yield stacked[:batch_size], batch_size
            pending, count = [stacked[batch_size:]], count - batch_size
    if count:
        stacked = np.concatenate(pending)
        pad = np.zeros((batch_size - count, *stacked.shape[1:]), stacked.dtype)
        yield np.concatenate([stacked, pad]), count


def _write_shard(path: pathlib.Path, records: Sequence[bytes]) -> None:
    """Write ``records`` to ``path`` through a temporary file renamed at the end."""
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(os.fspath(tmp), WRITER_OPTIONS)
    for record in records:
        writer.write(record)
    writer.close()
    os.replace(tmp, path)


def _tokenize_shard(source: Any, start: int, stop: int, render: _RenderViews, ids: Sequence[int], captioned: bool,
                    tokenize: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], batch_size: int, read_threads: int,
                    bar: Any) -> tuple[list[bytes], dict[str, Any]]:
    """Tokenize source[start:stop] -> (records, stats) of one shard."""
    skips = _SkipLog()
    ds = grain.MapDataset.range(start, stop).map(LoadRecord(source)).map(render)
    elements = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads))
    kept: list[dict[str, Any]] = []

    def kept_elements() -> Iterator[dict[str, Any]]:
        for element in elements.filter(DropSkipped(skips, repr(source))):
            kept.append({"label": element["label"], "index": element["index"], "caption": element["caption"]})
            bar.update(1)
            yield element

    batches = [tuple(x[:n] for x in tokenize(images)) for images, n in _padded_batches(kept_elements(), batch_size)]
    bar.update(stop - start - len(kept))  # skipped images count as processed
    records: list[bytes] = []
    lengths = np.concatenate([b[1] for b in batches]) if batches else np.zeros((0,), np.int32)
    if kept:  # rows are image-major: every view of one image, then the next image
        records = R.encode_records(
            np.concatenate([b[0] for b in batches]),
            labels=np.repeat([e["label"] for e in kept], len(ids)).astype(np.int32),
            indices=np.repeat([e["index"] for e in kept], len(ids)).astype(np.int64),
            augmentations=np.tile(np.asarray(ids, np.uint8), len(kept)),
            lengths=lengths,
            captions=[e["caption"] for e in kept for _ in ids] if captioned else None,
        )
    stats = {
        "num_records": len(records),
        "first_index": start,
        "stop_index": stop,
        "num_skipped": skips.count,
        "length_counts": {str(k): int(c) for k, c in zip(*np.unique(lengths, return_counts=True))},
        "skipped": [{"index": r.index, "reason": r.reason, "file_name": r.file_name}
                    for r in skips.records[:_MAX_LISTED_SKIPS]],
    }
    return records, stats


def _is_complete(out_dir: pathlib.Path, shard: int, num_shards: int) -> bool:
    # The shard is renamed into place after its stats: with both present it is final.
    return (out_dir / R.shard_name(shard, num_shards)).exists() and (out_dir / R.stats_name(shard, num_shards)).exists()


def write_manifest_if_complete(out_dir: str | os.PathLike) -> pathlib.Path | None:
    """Writes ``manifest.json`` once every planned shard exists; returns its path (or None)."""
    out_dir = pathlib.Path(out_dir)
    plan = R.read_json(out_dir / R.PLAN_NAME)
    n = plan["num_shards"]
    if not all(_is_complete(out_dir, s, n) for s in range(n)):
        return None
    shards = [{"file": R.shard_name(s, n), **R.read_json(out_dir / R.stats_name(s, n))} for s in range(n)]
    skipped = [item for shard in shards for item in shard.pop("skipped")]
    length_counts: dict[str, int] = {}
    for shard in shards:
        for k, c in shard.pop("length_counts").items():
            length_counts[k] = length_counts.get(k, 0) + c
    manifest = {
        **plan,
        "shards": shards,
        "num_records": sum(s["num_records"] for s in shards),
        "num_skipped": sum(s["num_skipped"] for s in shards),
        "length_counts": dict(sorted(length_counts.items(), key=lambda kv: int(kv[0]))),
        "skipped": skipped[:_MAX_LISTED_SKIPS],
    }
    path = out_dir / R.MANIFEST_NAME
    R.write_json_atomic(path, manifest)
    return path


def tokenize_dataset(
    model: Any,
    params: Any,
    source: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    image_size: int,
    batch_size: int,
    num_tokens: int | None = None,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    augment: Sequence[str] = (),
    mesh: Mesh | None = None,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 8,
    metadata: Mapping[str, Any] | None = None,
    quality: float | None = None,
    quality_steps: int = 4,
    quality_seed: int = 0,
    caption_key: str | None = None,
) -> dict[str, Any]:
    """Tokenize every image of ``source`` (and its augmented views) into ``out_dir``.

    ``source[i]`` is ``{"image": uint8 [H, W, C] or encoded bytes, "label"?: int}`` (any source of
    ``data.get_source``). Each image goes through the evaluation transform (decode, resize the
    shorter side to ``image_size``, centre crop, scale to [-1, 1]), plus the views ``augment``
    selects (``token_views``); ``model.tokenize`` turns each view into ``num_tokens`` (default:
    all registers) ids, stored with the label, source index and view id (``token_records``).
    Undecodable images are logged by name, counted and left out. With ``mesh`` (devices of this
    process only), batches are split over its batch axes; ``params`` must already live on it.
    Shard s holds every view of images [s m, (s + 1) m), m = max(1, records_per_shard // views
    per image). ``process_index`` / ``process_count`` (default: jax's) pick this process's shards.
    ``metadata`` (JSON-able) is stored in the manifest, e.g. the checkpoint path.
    ``quality``: each record's ``length`` is the fewest tokens (1, 2, 4, ..., n) that reconstruct
    the view to within this distance (``FlexTok.tokenize_adaptive`` with ``quality_steps`` /
    ``quality_seed``; all n ids are stored); the manifest's ``length_counts`` is the histogram.
    ``caption_key``: store each record's caption from this text feature of the source (e.g.
    "caption" of an image folder with sidecar .txt files or a captions.jsonl; a tfds text feature);
    a record without it, or with a caption that is not text, is skipped and counted.

    Returns a summary: shards written / already complete, records written, images skipped,
    seconds, records per second and the manifest path (None until every shard exists).
    """
    process_index, process_count = process_slot(process_index, process_count)
    if batch_size <= 0 or records_per_shard <= 0:
        raise ValueError(f"batch_size ({batch_size}) and records_per_shard ({records_per_shard}) must be positive")
    if model.config.vocab_size > R.MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size {model.config.vocab_size} does not fit the uint16 tokens of token records")
    if len(source) == 0:
        raise ValueError(f"source {source!r} is empty")
    k = model.config.n_registers if num_tokens is None else int(num_tokens)
    if not 1 <= k <= model.config.n_registers:
        raise ValueError(f"num_tokens must lie in [1, {model.config.n_registers}] (n_registers), got {num_tokens}")
    adaptive = None
    if quality is not None:
        if k != model.config.n_registers:
            raise ValueError("num_tokens and quality exclude each other (quality chooses each record's length)")
        if not np.isfinite(quality) or quality <= 0:
            raise ValueError(f"quality must be a finite distance > 0, got {quality}")
        adaptive = {"target": float(quality), "steps": int(quality_steps), "seed": int(quality_seed)}
    ids = view_ids(augment)
    images_per_shard = max(1, records_per_shard // len(ids))
    ranges = shard_ranges(len(source), images_per_shard)
    num_shards = len(ranges)
    mine = shards_of_process(num_shards, process_index, process_count)

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _make_plan(model, source, image_size, k, ids, augment, images_per_shard, records_per_shard, metadata,
                      adaptive, caption_key)
    _check_or_write_plan(out_dir, plan)

    done = [s for s in mine if _is_complete(out_dir, s, num_shards)]
    todo = [s for s in mine if s not in done]
    if done:
        logger.info("%s: %d of this process's %d shards are complete; resuming", out_dir, len(done), len(mine))
    tokenize = _tokenizer(model, params, k, batch_size, mesh, adaptive)
    render = _RenderViews(image_size, ids, caption_key)

    t0 = time.perf_counter()
    records_written = skipped = 0
    total = sum(ranges[s][1] - ranges[s][0] for s in todo)
    with tqdm(total=total, unit="img", desc="tokenize-dataset", disable=not progress) as bar:
        for s in todo:
            start, stop = ranges[s]
            records, stats = _tokenize_shard(source, start, stop, render, ids, caption_key is not None, tokenize,
                                             batch_size, read_threads, bar)
            R.write_json_atomic(out_dir / R.stats_name(s, num_shards), stats)
            _write_shard(out_dir / R.shard_name(s, num_shards), records)
            records_written += len(records)
            skipped += stats["num_skipped"]
            bar.set_postfix(skipped=skipped)
    seconds = time.perf_counter() - t0
    if skipped:
        logger.warning("skipped %d undecodable image(s) of %r (named above and in the shard stats)", skipped, source)
    manifest = write_manifest_if_complete(out_dir)
    return {
        "out_dir": os.fspath(out_dir),
        "manifest": None if manifest is None else os.fspath(manifest),
        "num_shards": num_shards,
        "shards_written": len(todo),
        "shards_already_complete": len(done),
        "records_written": records_written,
        "images_skipped": skipped,
        "seconds": seconds,
        "records_per_second": records_written / seconds if seconds > 0 else float("nan"),
    }
