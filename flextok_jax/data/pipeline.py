"""Training input pipeline: shuffled, process-sharded, augmented, batched, checkpointable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import jax

from flextok_jax.data import transforms as T
from flextok_jax.data.skips import SKIPPED_RECORDS, DropSkipped, SkipCounter


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
    """global_batch_size // process_count; ValueError if it does not divide."""
    if global_batch_size <= 0 or process_count <= 0:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) and process_count ({process_count}) must be positive"
        )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}"
        )
    return global_batch_size // process_count


def make_dataset(
    source: Sequence[dict[str, Any]],
    *,
    image_size: int,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    random_crop: bool = True,
    flip: bool = True,
    skip_counter: SkipCounter | None = None,
    read_threads: int = 8,
) -> grain.IterDataset:
    """Batches `{"image": float32 [B,S,S,3] in [-1,1], "label": int32 [B]}` for this process.

    B = global_batch_size // process_count, S = image_size. The order is one
    seeded global shuffle of `source` (reshuffled each epoch); process `p` takes
    positions p, p + process_count, ... of it, so processes see disjoint
    shards that together cover every epoch. Augmentation randomness is keyed on
    the global position, so it does not depend on process or worker count, and
    the output is identical for any `worker_count`.

    `iter(ds)` gives a grain `DatasetIterator` whose `get_state()` /
    `set_state()` resume exactly. Unusable records are dropped, logged and
    counted in `skip_counter` (default `SKIPPED_RECORDS`). `read_threads` is
    grain's reader thread count per process (or per worker). With a finite
    `num_epochs`, processes that drop different numbers of records may yield
    different numbers of batches; multi-host training should use
    `num_epochs=None` and stop after a step count.
    """
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    batch_size = per_process_batch_size(global_batch_size, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    if len(source) == 0:
        raise ValueError(f"source {source!r} is empty")

    # Shuffle source *indices* and load lazily: the source is only read for the
    # positions this process actually consumes, and load errors are caught per
    # record (LoadRecord) instead of inside grain.
    ds = grain.MapDataset.range(len(source)).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds.map(T.LoadRecord(source)).map(T.DecodeImage()).map(T.ResizeShorterSide(image_size))
    ds = ds.random_map(T.RandomCrop(image_size)) if random_crop else ds.map(T.CenterCrop(image_size))
    if flip:
        ds = ds.random_map(T.RandomHorizontalFlip())
    ds = ds.map(T.ScaleToSymmetricRange())
    # The per-process split comes after the random maps (all lazy) so that an
    # element's augmentation seed is its global position, not its shard position.
    ds = ds[process_index::process_count]

    # About two batches in flight per process, split across workers: grain's
    # default read buffer (500 elements) is ~400 MB per worker at 256 px float32.
    per_reader = max(2 * batch_size // max(worker_count, 1), 2)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(per_reader, 16))
    )
    if worker_count > 0:
        # Workers run everything above; skipped-record markers travel back so
        # they are counted here, in the trainer's process.
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=per_reader)
        )
    it = it.filter(DropSkipped(SKIPPED_RECORDS if skip_counter is None else skip_counter, repr(source)))
    return it.batch(batch_size, drop_remainder=True)
