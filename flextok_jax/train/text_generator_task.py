"""The text-conditional AR generator as a training task: captioned Fashion-MNIST token datasets.

Records are those of ``flextok tokenize-dataset`` ({tokens, label}); each image's caption is
drawn in the train step from the training templates of its class
(``flextok_jax.text.captions``): caption ids int32 [B] = ``caption_ids[label, j]``, j uniform.
The MiniLM features of every distinct caption are computed once, when the state is created,
and live in the frozen parameters ({'captions': {'tokens' [C, L, 384], 'mask' [C, L],
'pooled' [C, 384]}}, replicated), so no train step runs the text encoder.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flextok_jax.generator import TextCondition
from flextok_jax.text import MiniLM
from flextok_jax.text import captions as C
from flextok_jax.train.generator_task import GeneratorTask


class TextGeneratorTask(GeneratorTask):
    """Parameters: trainable {the text generator's}, frozen {'captions': caption features}.
    Batches: {'tokens': int32 [B, n], 'label': int32 [B]} (labels 0..9, Fashion-MNIST order).
    ``train.class_dropout`` is the rate of the null prefix."""

    def __init__(self, config: ml_collections.ConfigDict, encoder: Any = None):
        """``encoder``: a ``flextok_jax.text.MiniLM`` (default: ``MiniLM.from_pretrained()``,
        loaded only when the caption features are first needed)."""
        super().__init__(config)
        cfg = self.gen.config
        if cfg.condition != "text":
            raise ValueError("task 'text_generator' needs model.condition='text'")
        self.captions, caption_ids = C.caption_table(C.TRAIN_TEMPLATES)
        self.caption_ids = jnp.asarray(caption_ids)
        self._encoder = encoder
        self._features: dict[str, np.ndarray] | None = None

    def caption_features(self) -> dict[str, np.ndarray]:
        """The features of ``self.captions`` (computed on first use, then kept)."""
        if self._features is None:
            if self._encoder is None:
                self._encoder = MiniLM.from_pretrained()
            self._features = C.caption_features(self._encoder, self.captions, self.gen.config.max_text_tokens)
        return self._features

    def init_boxed(self, rng: jax.Array) -> tuple[Any, Any]:
        cfg = self.gen.config
        n, length, d = len(self.captions), cfg.max_text_tokens, cfg.text_dim

        def box(shape: tuple[int, ...], names: tuple[str, ...]) -> nn.LogicallyPartitioned:
            # Placeholders of the right shape; pretrained() fills in the MiniLM features.
            return nn.LogicallyPartitioned(jnp.zeros(shape, jnp.float32), names)

        frozen = {"captions": {
            "tokens": box((n, length, d), ("captions", "text_positions", "text_embed")),
            "mask": box((n, length), ("captions", "text_positions")),
            "pooled": box((n, d), ("captions", "text_embed")),
        }}
        return self.gen.init_boxed(rng), frozen

    def pretrained(self) -> dict[str, Any]:
        return {"captions": self.caption_features()}

    def condition(self, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[Any, jax.Array]:
        """Each image's caption features: a training template of its class, drawn per step."""
        r_caption, r_drop = jax.random.split(rng)
        labels = batch["label"]
        choice = jax.random.randint(r_caption, labels.shape, 0, self.caption_ids.shape[1])
        ids = self.caption_ids[labels, choice]  # int32 [B]
        table = frozen["captions"]
        cond = TextCondition(tokens=table["tokens"][ids], mask=table["mask"][ids] > 0, pooled=table["pooled"][ids],
                             null=jnp.zeros(labels.shape, bool))
        return cond, r_drop

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "captions": list(self.captions),
                "held_out_templates": list(C.HELD_OUT_TEMPLATES)}

    def export(self, directory: str, ema_params: Any, frozen: Any) -> str:
        # The caption features are the encoder's, not the generator's: only the generator is written.
        return super().export(directory, ema_params, {})
