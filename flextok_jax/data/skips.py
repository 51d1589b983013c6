"""Bookkeeping for records that cannot be used (corrupt bytes, wrong rank, ...).

A bad record must never stop a training run. Transforms turn it into a
`SkippedRecord` marker instead of raising; the marker flows through the rest of
the per-element pipeline (possibly inside grain worker processes) and is dropped
by `DropSkipped` in the main process. Counting happens there, because counters
incremented inside spawned worker processes would be invisible to the trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import grain

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """Stands in for a record that could not be loaded or decoded."""

    index: int  # index into the random-access source
    reason: str
    file_name: str | None = None

    def describe(self) -> str:
        where = f"record {self.index}"
        if self.file_name:
            where += f" ({self.file_name})"
        return f"{where}: {self.reason}"


class SkipCounter:
    """Thread-safe count of skipped records (per Python process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._last: SkippedRecord | None = None

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    @property
    def last(self) -> SkippedRecord | None:
        """The most recently skipped record, for error reports."""
        with self._lock:
            return self._last

    def add(self, record: SkippedRecord) -> None:
        with self._lock:
            self._count += 1
            self._last = record

    def reset(self) -> None:
        with self._lock:
            self._count = 0
            self._last = None


# Default counter used by `make_dataset` when none is passed.
SKIPPED_RECORDS = SkipCounter()


def is_skipped(element: Any) -> bool:
    return isinstance(element, SkippedRecord)


class DropSkipped(grain.transforms.Filter):
    """Drops `SkippedRecord` markers, logging and counting each one."""

    def __init__(self, counter: SkipCounter, source_name: str) -> None:
        self._counter = counter
        self._source_name = source_name

    def filter(self, element: Any) -> bool:
        if not isinstance(element, SkippedRecord):
            return True
        self._counter.add(element)
        logger.warning("Skipping %s %s", self._source_name, element.describe())
        return False
