"""The class-conditional AR generator as a training task: next-token cross-entropy over token
datasets written by ``flextok tokenize-dataset`` (``flextok_jax.data.token_dataset``)."""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from flextok_jax import generator
from flextok_jax.data.token_source import TokenDataSource, check_compatible, make_token_dataset
from flextok_jax.parallel import gather_to_host
from flextok_jax.train.task import Metrics, Task

EXPORT_FILE = "generator.safetensors"


def generator_config(config: ml_collections.ConfigDict) -> generator.GeneratorConfig:
    """``config.model`` (GeneratorConfig fields) + ``config.dtype``."""
    return generator.GeneratorConfig.from_dict({**config.model.to_dict(), "dtype": config.dtype})


class GeneratorTask(Task):
    """Parameters: trainable {the generator's}, nothing frozen. Batches: {'tokens': int32 [B, n],
    'label': int32 [B]} from ``config.data.tokens`` (a token-dataset folder), of which the
    first ``model.max_tokens`` tokens train (FlexTok prefixes are valid images)."""

    batch_keys = ("tokens", "label")
    item_name = "tokens"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.gen = generator.Generator(generator_config(config))
        self.class_dropout = float(config.train.class_dropout)
        self._source: TokenDataSource | None = None

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

    def loss(self, params: Any, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        tokens = batch["tokens"][:, : self.gen.config.max_tokens]
        return generator.next_token_loss(self.gen, params, batch["label"], tokens, rng, self.class_dropout)

    def dataset(self, source: Any = None):
        return make_token_dataset(
            self.source() if source is None else source,
            global_batch_size=int(self.config.train.global_batch_size), seed=int(self.config.data.seed),
            shuffle=True, num_epochs=None, worker_count=int(self.config.data.worker_count),
        )

    def items_per_batch(self, global_batch_size: int) -> int:
        return global_batch_size * self.gen.config.max_tokens

    def metadata(self) -> dict[str, Any]:
        return {"generator_config": self.gen.config.to_dict()}

    def export(self, directory: str, ema_params: Any, frozen: Any) -> str:
        host = gather_to_host(ema_params)
        target = os.path.join(directory, EXPORT_FILE)
        if jax.process_index() == 0:
            os.makedirs(directory, exist_ok=True)
            generator.save_params(target, host, self.gen.config)
        return target
