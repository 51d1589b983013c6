"""The class-conditional AR generator as a training task: next-token cross-entropy over token
datasets written by ``flextok tokenize-dataset`` (``flextok_jax.data.token_dataset``), in
batches of one length (``max_tokens``) or length-bucketed (``config.data.buckets``)."""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from flextok_jax import generator
from flextok_jax.data import token_buckets
from flextok_jax.data.token_source import TokenDataSource, check_compatible, make_token_dataset
from flextok_jax.parallel import BATCH_AXES, gather_to_host
from flextok_jax.train.task import Metrics, Task

EXPORT_FILE = "generator.safetensors"


def generator_config(config: ml_collections.ConfigDict) -> generator.GeneratorConfig:
    """``config.model`` (GeneratorConfig fields) + ``config.dtype``."""
    return generator.GeneratorConfig.from_dict({**config.model.to_dict(), "dtype": config.dtype})


class GeneratorTask(Task):
    """Parameters: trainable {the generator's}, nothing frozen. Batches: {'tokens': int32 [B, T],
    'label': int32 [B]} from ``config.data.tokens`` (a token-dataset folder): T = ``model.max_tokens``
    (the first tokens of each record; FlexTok prefixes are valid images), or with
    ``data.buckets.enabled`` one bucket's length per step (``token_buckets``; in 'length' mode
    also 'length': int32 [B], each record's own length, trained with EOS)."""

    batch_keys = ("tokens", "label")
    item_name = "tokens"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.gen = generator.Generator(generator_config(config))
        self.class_dropout = float(config.train.class_dropout)
        self._source: TokenDataSource | None = None
        buckets = config.data.get("buckets")
        self.buckets = buckets if buckets is not None and buckets.enabled else None
        if self.buckets is not None:
            if self.buckets.mode not in token_buckets.MODES:
                raise ValueError(f"data.buckets.mode must be one of {token_buckets.MODES}, got {self.buckets.mode!r}")
            if max(self.buckets.lengths) > self.gen.config.max_tokens:
                raise ValueError(f"data.buckets.lengths {tuple(self.buckets.lengths)} exceed model.max_tokens "
                                 f"{self.gen.config.max_tokens}")
            if self.buckets.mode == "length":
                if not self.gen.config.eos:
                    raise ValueError("data.buckets.mode='length' trains each record's length with EOS: set model.eos=True")
                self.batch_keys = ("tokens", "label", "length")

    def source(self) -> TokenDataSource:
        if self._source is None:
            if not self.config.data.tokens:
                raise ValueError("config.data.tokens must name a token-dataset folder (flextok tokenize-dataset)")
            self._source = TokenDataSource(self.config.data.tokens)
            cfg = self.gen.config
            check_compatible(self._source, cfg.vocab_size, int(self._source.manifest["num_tokens"]))
            if int(self._source.manifest["num_tokens"]) < cfg.max_tokens:
                raise ValueError(f"{self.config.data.tokens}: records hold {self._source.manifest['num_tokens']} "
                                 f"tokens, the model trains on max_tokens={cfg.max_tokens}")
        return self._source

    def init_boxed(self, rng: jax.Array) -> tuple[Any, Any]:
        return self.gen.init_boxed(rng), {}

    def condition(self, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[Any, jax.Array]:
        """(the generator's condition for ``batch``, the rng left for the loss): the labels."""
        return batch["label"], rng

    def loss(self, params: Any, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        tokens = batch["tokens"][:, : self.gen.config.max_tokens]
        cond, rng = self.condition(frozen, batch, rng)
        return generator.next_token_loss(self.gen, params, cond, tokens, rng, self.class_dropout,
                                         lengths=batch.get("length"))

    def tokens_per_step(self) -> int:
        """The tokens one step trains on: ``data.buckets.tokens_per_step`` or batch x max_tokens."""
        per_step = int(self.buckets.tokens_per_step) if self.buckets is not None else 0
        return per_step or int(self.config.train.global_batch_size) * self.gen.config.max_tokens

    def bucket_plan(self, source: Any = None) -> token_buckets.BucketPlan:
        """``data.buckets`` as a plan: batch sizes multiples of the mesh's data-parallel size;
        in 'length' mode each bucket's width holds its EOS (``token_buckets.eos_widths``) and,
        without weights, each bucket is weighted by the records it holds."""
        b = self.buckets
        # The loop's mesh spans every device (a -1 takes the rest); its data axes split each batch.
        shape = [int(s) for s in self.config.mesh.shape]
        rest = int(np.prod([s for s in shape if s != -1]))
        sizes = dict(zip(self.config.mesh.axis_names, [jax.device_count() // rest if s == -1 else s for s in shape]))
        multiple = int(np.prod([sizes.get(a, 1) for a in BATCH_AXES]))
        source = self.source() if source is None and b.mode == "length" else source
        widths = token_buckets.eos_widths(b.lengths, source.num_tokens) if b.mode == "length" else None
        plan = token_buckets.plan_buckets(tuple(b.lengths), self.tokens_per_step(), weights=b.weights,
                                          multiple=multiple, curriculum_steps=int(b.curriculum_steps),
                                          tolerance=float(b.tolerance), widths=widths)
        if b.mode == "length" and b.weights is None:
            members = token_buckets.bucket_members(plan, len(source), "length", source.record_lengths())
            plan = token_buckets.weights_by_records(plan, members)
        return plan

    def dataset(self, source: Any = None):
        source = self.source() if source is None else source
        if self.buckets is not None:
            lengths = source.record_lengths() if self.buckets.mode == "length" else None
            return token_buckets.BucketedTokenIterator(source, self.bucket_plan(source), seed=int(self.config.data.seed),
                                                       mode=self.buckets.mode, record_lengths=lengths)
        return self.fixed_length_dataset(source)

    def fixed_length_dataset(self, source: Any, keys: tuple[str, ...] = ("tokens", "label")):
        """Shuffled batches of ``train.global_batch_size`` whole records (``keys`` of them)."""
        return make_token_dataset(
            source, global_batch_size=int(self.config.train.global_batch_size), seed=int(self.config.data.seed),
            shuffle=True, num_epochs=None, worker_count=int(self.config.data.worker_count), keys=keys,
        )

    def items_per_batch(self, global_batch_size: int) -> int:
        # Bucketed steps hold tokens_per_step within data.buckets.tolerance.
        return self.tokens_per_step()

    def metadata(self) -> dict[str, Any]:
        return {"generator_config": self.gen.config.to_dict()}

    def export(self, directory: str, ema_params: Any, frozen: Any) -> str:
        host = gather_to_host(ema_params)
        target = os.path.join(directory, EXPORT_FILE)
        if jax.process_index() == 0:
            os.makedirs(directory, exist_ok=True)
            generator.save_params(target, host, self.gen.config)
        return target
