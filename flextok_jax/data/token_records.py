"""On-disk format of token datasets: one fixed binary layout per record, JSON manifests.

A record is a packed little-endian struct (numpy structured dtype, 24 + 2 n bytes), then its
caption (c bytes of UTF-8; c = 0 without one)::

    offset  size  field
    0       4     magic         b"FTOK"
    4       1     version       2
    5       1     augmentation  uint8 view id (see ``token_views.VIEW_NAMES``)
    6       2     num_tokens    uint16 n (every record of a dataset has the same n)
    8       4     label         int32
    12      8     index         int64, the record's index in the image source
    20      2     length        uint16 in [1, n]: the image's own number of tokens (n, or the
                                adaptive k of ``tokenize_dataset(quality=...)``)
    22      2     caption_bytes uint16 c
    24      2 n   tokens        uint16 [n] (all n ids; an image of length k uses the first k)
    24 + 2 n  c   caption       UTF-8 text (the image's caption, e.g. from a sidecar .txt)

Why not pickle or msgpack: reading a record must never execute code, the layout is readable by
``np.frombuffer`` in any language without our code, every field is validated on read, and it is
as small as the tokens allow (uint16 holds every FSQ vocabulary up to 65 536 codes).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

MAGIC = b"FTOK"
RECORD_VERSION = 2
FORMAT = "flextok_token_dataset"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "plan.json"
MAX_VOCAB_SIZE = 2**16
MAX_CAPTION_BYTES = 2**16 - 1
HEADER_BYTES = 24

LAYOUT_DESCRIPTION = (
    "little-endian packed struct: magic S4 'FTOK', version u1, augmentation u1, num_tokens u2, "
    "label i4, index i8, length u2, caption_bytes u2, tokens u2[num_tokens], caption utf-8[caption_bytes]"
)


def record_dtype(num_tokens: int) -> np.dtype:
    """The packed numpy dtype of one record holding ``num_tokens`` tokens."""
    return np.dtype(
        [
            ("magic", "S4"),
            ("version", "u1"),
            ("augmentation", "u1"),
            ("num_tokens", "<u2"),
            ("label", "<i4"),
            ("index", "<i8"),
            ("length", "<u2"),
            ("caption_bytes", "<u2"),
            ("tokens", "<u2", (int(num_tokens),)),
        ]
    )


def encode_records(tokens: np.ndarray, labels: np.ndarray, indices: np.ndarray, augmentations: np.ndarray,
                   lengths: np.ndarray | None = None, captions: Sequence[str] | None = None) -> list[bytes]:
    """tokens [R, n] (values < 65 536), labels / indices / augmentations [R], lengths [R] in
    [1, n] (default n), captions R strings (default none) -> R records."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [R, n], got shape {tokens.shape}")
    lengths = np.full(tokens.shape[0], tokens.shape[1]) if lengths is None else np.asarray(lengths)
    if lengths.shape != tokens.shape[:1] or (lengths.size and (lengths.min() < 1 or lengths.max() > tokens.shape[1])):
        raise ValueError(f"lengths must be [{tokens.shape[0]}] in [1, {tokens.shape[1]}], got shape {lengths.shape}"
                         + (f", range [{lengths.min()}, {lengths.max()}]" if lengths.size else ""))
    if tokens.size and (tokens.min() < 0 or tokens.max() >= MAX_VOCAB_SIZE):
        raise ValueError(f"token ids must lie in [0, {MAX_VOCAB_SIZE}), got [{tokens.min()}, {tokens.max()}]")
    rows = np.zeros(tokens.shape[0], record_dtype(tokens.shape[1]))
    rows["magic"] = MAGIC
    rows["version"] = RECORD_VERSION
    rows["augmentation"] = augmentations
    rows["num_tokens"] = tokens.shape[1]
    rows["label"] = labels
    rows["index"] = indices
    rows["length"] = lengths
    rows["tokens"] = tokens
    if captions is None:
        return [row.tobytes() for row in rows]
    if len(captions) != tokens.shape[0]:
        raise ValueError(f"{len(captions)} captions for {tokens.shape[0]} records")
    texts = [str(c).encode("utf-8") for c in captions]
    long = [i for i, t in enumerate(texts) if len(t) > MAX_CAPTION_BYTES]
    if long:
        raise ValueError(f"caption of record {long[0]} has {len(texts[long[0]])} bytes of UTF-8, at most "
                         f"{MAX_CAPTION_BYTES} fit a record")
    rows["caption_bytes"] = [len(t) for t in texts]
    return [row.tobytes() + t for row, t in zip(rows, texts)]


def decode_records(records: Sequence[bytes], num_tokens: int,
                   where: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """R records' bytes -> (a structured array [R] of ``record_dtype(num_tokens)``, R captions).

    ValueError naming ``where(i)`` for the first malformed record i (size, magic, version, n,
    length, caption).
    """
    dtype = record_dtype(num_tokens)
    for i, data in enumerate(records):
        if len(data) < dtype.itemsize:
            raise ValueError(f"{where(i)}: record has {len(data)} bytes, expected at least {dtype.itemsize} for "
                             f"{num_tokens} tokens")
    plain = all(len(data) == dtype.itemsize for data in records)  # no captions: one join, no slicing
    rows = np.frombuffer(b"".join(records if plain else (bytes(data[: dtype.itemsize]) for data in records)), dtype)
    bad = (rows["magic"] != MAGIC) | (rows["version"] != RECORD_VERSION)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where(i)}: not a token record (magic {bytes(rows['magic'][i])!r}, version {rows['version'][i]}; "
            f"expected {MAGIC!r}, version {RECORD_VERSION})"
        )
    wrong_n = rows["num_tokens"] != num_tokens
    if wrong_n.any():
        i = int(np.argmax(wrong_n))
        raise ValueError(f"{where(i)}: record holds {rows['num_tokens'][i]} tokens, the manifest says {num_tokens}")
    bad_length = (rows["length"] < 1) | (rows["length"] > num_tokens)
    if bad_length.any():
        i = int(np.argmax(bad_length))
        raise ValueError(f"{where(i)}: record length {rows['length'][i]} outside [1, {num_tokens}]")
    if plain and not rows["caption_bytes"].any():
        return rows, [""] * len(records)
    captions = []
    for i, data in enumerate(records):
        tail = bytes(data[dtype.itemsize:])
        if len(tail) != rows["caption_bytes"][i]:
            raise ValueError(f"{where(i)}: record has {len(data)} bytes, expected {dtype.itemsize} for {num_tokens} "
                             f"tokens + {rows['caption_bytes'][i]} of caption")
        try:
            captions.append(tail.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{where(i)}: caption is not UTF-8 ({e})") from e
    return rows, captions


def shard_name(shard: int, num_shards: int) -> str:
    return f"tokens-{shard:05d}-of-{num_shards:05d}.array_record"


def stats_name(shard: int, num_shards: int) -> str:
    """The per-shard JSON written just before its shard is renamed into place."""
    return f"tokens-{shard:05d}-of-{num_shards:05d}.stats.json"


def write_json_atomic(path: str | os.PathLike, value: Mapping[str, Any]) -> None:
    """Write ``value`` to ``path`` through a temporary file, so readers never see half of it.

    Sorted keys and a fixed indent make equal values byte-identical files.
    """
    path = os.fspath(path)
    # Several hosts may write the same (identical) file on a shared file system.
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError naming the file if it is not one."""
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{os.fspath(path)} holds a JSON {type(value).__name__}, expected an object")
    return value
