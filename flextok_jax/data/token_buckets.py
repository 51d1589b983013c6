"""Length-bucketed batches of token records (Dataset Decomposition, Pouransari et al. 2024).

FlexTok prefixes are valid images, so a generator can train on the first L tokens of a record
for any L. A ``BucketPlan`` names the buckets (one sequence length each), the global batch size
of each, chosen so that every step holds about the same number of tokens, a sampling weight per
bucket and an optional curriculum (short buckets first). ``BucketedTokenIterator`` yields this
process's slice of one bucket's batch per step; each bucket has one batch shape, so the jitted
train step compiles once per bucket.

Two ways a record joins a bucket:

- ``prefix`` (fixed-length records): every record is in every bucket; bucket L trains its
  first L tokens.
- ``length`` (records with a per-record ``length``, e.g. an adaptive tokenization): a record
  of length k is in the shortest bucket with L >= k and trains its k tokens followed by EOS;
  the batch carries ``length`` so the loss masks the rest (``generator.next_token_loss``).

Which bucket a step takes is drawn from (seed, step) alone, identically on every process; within
a bucket, records come in a seeded permutation per (bucket, epoch). The iterator's state is the
step and how many records each bucket has used, so a restored iterator continues exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from flextok_jax.data.pipeline import per_process_batch_size
from flextok_jax.data.token_dataset import process_slot

MODES = ("prefix", "length")


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """lengths: the longest record (``length`` mode) or the prefix (``prefix`` mode) each bucket
    trains, ascending; batch_sizes: their global batch sizes; widths: the positions each
    bucket's sequences hold (its length, plus the EOS position in ``length`` mode:
    ``eos_widths``); weights: sampling weights (normalised); curriculum_steps: 0, or the number
    of steps over which the buckets open from the shortest alone to all of them."""

    lengths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    weights: tuple[float, ...]
    curriculum_steps: int = 0

    @property
    def tokens_per_step(self) -> tuple[int, ...]:
        """The positions one batch of each bucket trains (batch size x width)."""
        return tuple(b * n for b, n in zip(self.batch_sizes, self.widths))

    def open_buckets(self, step: int) -> int:
        """How many buckets (shortest first) step ``step`` may draw from."""
        if self.curriculum_steps <= 0 or step >= self.curriculum_steps:
            return len(self.lengths)
        return 1 + int(step * len(self.lengths) // self.curriculum_steps)

    def bucket_of_step(self, seed: int, step: int) -> int:
        """The bucket step ``step`` trains on: drawn from the open buckets by their weights."""
        n = self.open_buckets(step)
        w = np.asarray(self.weights[:n], np.float64)
        u = np.random.default_rng([seed, step, 0x6275636B]).random()
        return int(min(np.searchsorted(np.cumsum(w / w.sum()), u, side="right"), n - 1))


def eos_widths(lengths: Sequence[int], max_tokens: int) -> tuple[int, ...]:
    """The positions a ``length``-mode bucket trains: its records' tokens and the EOS after the
    longest, L + 1, or max_tokens where the longest uses every position (no EOS there)."""
    return tuple(min(int(n) + 1, int(max_tokens)) for n in lengths)


def plan_buckets(lengths: Sequence[int], tokens_per_step: int, *, weights: Sequence[float] | None = None,
                 multiple: int = 1, curriculum_steps: int = 0, tolerance: float = 0.1,
                 widths: Sequence[int] | None = None) -> BucketPlan:
    """A plan whose bucket of width W (default its length L; ``eos_widths`` in ``length`` mode)
    has the batch size nearest tokens_per_step / W that is a multiple of ``multiple`` (the
    mesh's data-parallel size), so that every position weighs the same in the loss whatever its
    bucket; ValueError naming the bucket when its batch misses ``tokens_per_step`` by more than
    ``tolerance`` (a fraction). Default weights: equal."""
    lengths = tuple(int(n) for n in lengths)
    if not lengths or any(n <= 0 for n in lengths) or list(lengths) != sorted(set(lengths)):
        raise ValueError(f"bucket lengths must be positive, distinct and ascending, got {lengths}")
    widths = lengths if widths is None else tuple(int(w) for w in widths)
    if len(widths) != len(lengths) or any(w < n for w, n in zip(widths, lengths)):
        raise ValueError(f"bucket widths {widths} must be one per bucket and at least its length {lengths}")
    if tokens_per_step <= 0 or multiple <= 0:
        raise ValueError(f"tokens_per_step ({tokens_per_step}) and multiple ({multiple}) must be positive")
    weights = (1.0,) * len(lengths) if weights is None else tuple(float(w) for w in weights)
    if len(weights) != len(lengths) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need {len(lengths)} non-negative bucket weights, not all 0, got {weights}")
    if curriculum_steps < 0:
        raise ValueError(f"curriculum_steps must be >= 0, got {curriculum_steps}")
    batch_sizes = []
    for n, width in zip(lengths, widths):
        b = max(1, round(tokens_per_step / width / multiple)) * multiple
        if abs(b * width - tokens_per_step) > tolerance * tokens_per_step:
            raise ValueError(
                f"bucket of length {n}: its batch of {b} (a multiple of {multiple}) holds {b * width} tokens, more "
                f"than {tolerance:.0%} from tokens_per_step={tokens_per_step}; raise tokens_per_step or the tolerance")
        batch_sizes.append(b)
    total = sum(weights)
    return BucketPlan(lengths, tuple(batch_sizes), widths, tuple(w / total for w in weights), int(curriculum_steps))


def bucket_members(plan: BucketPlan, num_records: int, mode: str,
                   record_lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """Record indices of each bucket: all of them in every bucket (``prefix``), or each record
    in the shortest bucket that holds its length (``length``; ValueError for a record longer
    than the longest bucket)."""
    if mode not in MODES:
        raise ValueError(f"bucket mode must be one of {MODES}, got {mode!r}")
    if mode == "prefix":
        return [np.arange(num_records, dtype=np.int64)] * len(plan.lengths)
    if record_lengths is None or len(record_lengths) != num_records:
        raise ValueError("bucket mode 'length' needs one length per record")
    record_lengths = np.asarray(record_lengths)
    if record_lengths.min(initial=1) < 1 or record_lengths.max(initial=0) > plan.lengths[-1]:
        raise ValueError(f"record lengths [{record_lengths.min()}, {record_lengths.max()}] do not fit buckets "
                         f"{plan.lengths} (need 1 <= length <= {plan.lengths[-1]})")
    which = np.searchsorted(np.asarray(plan.lengths), record_lengths, side="left")
    return [np.flatnonzero(which == b).astype(np.int64) for b in range(len(plan.lengths))]


def weights_by_records(plan: BucketPlan, members: Sequence[np.ndarray]) -> BucketPlan:
    """``plan`` with each bucket weighted by the batches its records fill (len(members) / batch
    size), so that every record is drawn at the same rate whatever its bucket."""
    w = np.array([len(m) / b for m, b in zip(members, plan.batch_sizes)], np.float64)
    if w.sum() <= 0:
        raise ValueError("no bucket holds any record")
    return dataclasses.replace(plan, weights=tuple(float(x) for x in w / w.sum()))


class BucketedTokenIterator:
    """This process's batches: ``{"tokens": int32 [B_b / P, T_b], "label": int32 [B_b / P]}``
    (plus ``"length"`` int32 in ``length`` mode), from the bucket ``plan.bucket_of_step`` picks.

    ``source``: a ``TokenDataSource`` (``read_batch``). T_b is the bucket's width
    (``plan.widths``: in ``length`` mode room for the EOS after its longest record).
    ``get_state`` / ``set_state``: JSON-serialisable {"step", "consumed" per bucket}.
    """

    def __init__(self, source: Any, plan: BucketPlan, seed: int, mode: str = "prefix",
                 record_lengths: np.ndarray | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> None:
        if plan.widths[-1] > source.num_tokens:
            raise ValueError(f"bucket width {plan.widths[-1]} > the {source.num_tokens} tokens per record of {source!r}")
        self.source, self.plan, self.seed, self.mode = source, plan, int(seed), mode
        self.process_index, self.process_count = process_slot(process_index, process_count)
        for b in plan.batch_sizes:
            per_process_batch_size(b, self.process_count)
        if mode == "length" and plan.widths != eos_widths(plan.lengths, source.num_tokens):
            raise ValueError(f"bucket widths {plan.widths} must hold each bucket's EOS: "
                             f"{eos_widths(plan.lengths, source.num_tokens)} (plan_buckets(widths=eos_widths(...)))")
        self.members = bucket_members(plan, len(source), mode, record_lengths)
        self._lengths = None if record_lengths is None else np.asarray(record_lengths, np.int32)
        empty = [n for n, m, w in zip(plan.lengths, self.members, plan.weights) if len(m) == 0 and w > 0]
        if empty:
            raise ValueError(f"buckets of length {empty} hold no records but have a sampling weight")
        self.step = 0
        self.consumed = [0] * len(plan.lengths)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}

    def __iter__(self) -> "BucketedTokenIterator":
        return self

    def _indices(self, bucket: int, count: int) -> np.ndarray:
        """The next ``count`` records of ``bucket``: positions consumed .. consumed + count of its
        endless sequence of seeded permutations (one per epoch)."""
        members = self.members[bucket]
        start, out = self.consumed[bucket], []
        while count > 0:
            epoch, offset = divmod(start, len(members))
            perm = self._permutation(bucket, epoch)
            take = min(count, len(members) - offset)
            out.append(members[perm[offset: offset + take]])
            start, count = start + take, count - take
        return np.concatenate(out)

    def _permutation(self, bucket: int, epoch: int) -> np.ndarray:
        # One shuffle per bucket and epoch, kept until the bucket's next epoch (not one per step).
        cached = self._perms.get(bucket)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, bucket, epoch]).permutation(len(self.members[bucket])))
            self._perms[bucket] = cached
        return cached[1]

    def peek_bucket(self) -> int:
        """The bucket the next batch comes from."""
        return self.plan.bucket_of_step(self.seed, self.step)

    def __next__(self) -> dict[str, np.ndarray]:
        bucket = self.peek_bucket()
        size = self.plan.batch_sizes[bucket]
        indices = self._indices(bucket, size)
        self.consumed[bucket] += size
        self.step += 1
        per = size // self.process_count
        mine = indices[self.process_index * per: (self.process_index + 1) * per]
        batch = self.source.read_batch(mine)
        width = self.plan.widths[bucket]
        if self.mode == "prefix":
            return {"tokens": batch["tokens"][:, :width], "label": batch["label"]}
        return {"tokens": batch["tokens"][:, :width], "label": batch["label"], "length": self._lengths[mine]}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "consumed": list(self.consumed)}

    def set_state(self, state: dict[str, Any]) -> None:
        consumed = [int(c) for c in state["consumed"]]
        if len(consumed) != len(self.plan.lengths):
            raise ValueError(f"iterator state has {len(consumed)} buckets, the plan {len(self.plan.lengths)}")
        self.step, self.consumed = int(state["step"]), consumed
