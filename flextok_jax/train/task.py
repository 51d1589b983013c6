"""The contract between a model and the one training system.

A ``Task`` brings what is particular to a model: its parameters (boxed with logical axis names),
its loss, its input batches, the file it exports and, optionally, a picture to log. Everything
else — the optimizer, the sharded state, the jitted step, checkpoints, resume, preemption, NaN
handling, metrics and the progress bar — is the training system's, shared by every task
(``flextok_jax.train.setup`` and ``flextok_jax.train.loop``).
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Sequence

import jax
from jax.sharding import Mesh

Metrics = dict[str, jax.Array]
Rules = Sequence[tuple[str, Any]]
# (state, step) -> uint8 [H, W, 3] picture, or None when there is nothing to show this step.
ImageLogger = Callable[[Any, int], Any]


class Task(abc.ABC):
    """One trainable model. Subclasses set ``batch_keys`` (the arrays a step receives) and
    ``item_name`` (what throughput counts: "images", "tokens")."""

    batch_keys: tuple[str, ...] = ()
    item_name: str = "items"

    @abc.abstractmethod
    def init_boxed(self, rng: jax.Array) -> tuple[Any, Any]:
        """rng -> (trainable, frozen) parameters, leaves wrapped in ``nn.LogicallyPartitioned``.
        Frozen parameters are used by the loss but never updated (e.g. the VAE)."""

    def pretrained(self) -> dict[str, Any] | None:
        """Host arrays that replace top-level parts of the random init ({'encoder': ..., 'vae': ...});
        None to start from random weights."""
        return None

    @abc.abstractmethod
    def loss(self, params: Any, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """(scalar loss, scalar metrics); ``params`` are differentiated. Metrics must include 'loss'."""

    @abc.abstractmethod
    def dataset(self, source: Any = None) -> Iterator[dict[str, Any]]:
        """This process's batches (a checkpointable grain iterator: ``get_state`` / ``set_state``);
        ``source`` replaces the configured one (a random-access sequence of records)."""

    def items_per_batch(self, global_batch_size: int) -> int:
        """How many ``item_name`` one global batch holds (for the throughput metric)."""
        return global_batch_size

    def skipped_records(self) -> int:
        """Corrupt records the input pipeline skipped so far (logged as data/skipped)."""
        return 0

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable facts stored with every checkpoint (e.g. the model config)."""
        return {}

    @abc.abstractmethod
    def export(self, directory: str, ema_params: Any, frozen: Any) -> str:
        """Write the final (EMA) weights under ``directory`` on process 0 (every process calls it,
        so sharded arrays can be gathered); returns the file's path."""

    def image_logger(self, mesh: Mesh, rules: Rules, first_batch: dict[str, jax.Array]) -> ImageLogger | None:
        """Optional periodic picture (e.g. reconstruction grids); None for none."""
        return None
