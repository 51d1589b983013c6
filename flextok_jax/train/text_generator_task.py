"""The text-conditional AR generator as training tasks: template captions of Fashion-MNIST
classes (``data.captions='templates'``, ``TextGeneratorTask``) or each record's own caption
(``data.captions='records'``, ``RecordCaptionTextGeneratorTask``).

Templates: records are those of ``flextok tokenize-dataset`` ({tokens, label}); each image's caption is
drawn in the train step from the training templates of its class
(``flextok_jax.text.captions``): caption ids int32 [B] = ``caption_ids[label, j]``, j uniform.
The MiniLM features of every distinct caption are computed once, when the state is created,
and live in the frozen parameters ({'captions': {'tokens' [C, L, 384], 'mask' [C, L],
'pooled' [C, 384]}}, replicated), so no train step runs the text encoder.
"""
from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flextok_jax.generator import TextCondition
from flextok_jax.text import MiniLM
from flextok_jax.text import captions as C
from flextok_jax.train.generator_task import GeneratorTask


class _TextTask(GeneratorTask):
    """What both caption sources share: a text model, and an export of the generator alone (the
    frozen text state is the encoder's, not the generator's)."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        if self.gen.config.condition != "text":
            raise ValueError("task 'text_generator' needs model.condition='text'")

    def export(self, directory: str, ema_params: Any, frozen: Any) -> str:
        return super().export(directory, ema_params, {})


class TextGeneratorTask(_TextTask):
    """Parameters: trainable {the text generator's}, frozen {'captions': caption features}.
    Batches: {'tokens': int32 [B, n], 'label': int32 [B]} (labels 0..9, Fashion-MNIST order).
    ``train.class_dropout`` is the rate of the null prefix."""

    def __init__(self, config: ml_collections.ConfigDict, encoder: Any = None):
        """``encoder``: a ``flextok_jax.text.MiniLM`` (default: ``MiniLM.from_pretrained()``,
        loaded only when the caption features are first needed)."""
        super().__init__(config)
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


class _EncodeCaptions(grain.transforms.Map):
    """A batch with "caption" (object [B] of str) -> the same with "text_ids" / "text_mask"
    int32 [B, L] (MiniLM's tokenizer, padded or truncated to L; the captions themselves dropped)."""

    def __init__(self, tokenizer: Any, length: int) -> None:
        self._tokenizer, self._length = tokenizer, int(length)

    def map(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in batch.items() if k != "caption"}
        with warnings.catch_warnings():  # long captions are cut to the generator's text slots, as prompts are
            warnings.simplefilter("ignore")
            out["text_ids"], out["text_mask"] = self._tokenizer.encode(
                [str(c) for c in batch["caption"]], max_length=self._length)
        return out


class RecordCaptionTextGeneratorTask(_TextTask):
    """``data.captions='records'``: each record's own caption (``tokenize-dataset --caption_key``,
    e.g. an image folder's captions.jsonl or sidecar .txt files, a tfds text feature).

    Parameters: trainable {the text generator's}, frozen {'text_encoder': MiniLM's}. Batches:
    {'tokens', 'label', 'text_ids', 'text_mask'} (captions tokenised on the host); the train step
    runs MiniLM (no gradient) on them. An empty caption is the null prompt, as for
    ``flextok generate``; ``train.class_dropout`` is the rate of the null prefix on top.
    """

    batch_keys = ("tokens", "label", "text_ids", "text_mask")

    def __init__(self, config: ml_collections.ConfigDict, encoder: Any = None):
        """``encoder``: a ``flextok_jax.text.MiniLM`` (default ``MiniLM.from_pretrained()``)."""
        super().__init__(config)
        cfg = self.gen.config
        if self.buckets is not None:
            raise ValueError("data.captions='records' reads batches of one length; set data.buckets.enabled=False")
        self.encoder = MiniLM.from_pretrained() if encoder is None else encoder
        if self.encoder.config.hidden_size != cfg.text_dim:
            raise ValueError(f"text encoder width {self.encoder.config.hidden_size} != model.text_dim {cfg.text_dim}")
        self.text_length = min(cfg.max_text_tokens, self.encoder.tokenizer.max_tokens)

    def source(self):
        source = super().source()
        if not source.manifest.get("caption_key"):
            raise ValueError(f"{source.path}: the records hold no captions (written without --caption_key); "
                             "use data.captions='templates' or tokenize again with --caption_key")
        return source

    def init_boxed(self, rng: jax.Array) -> tuple[Any, Any]:
        r_gen, r_text = jax.random.split(rng)
        ids = jnp.zeros((1, 2), jnp.int32)
        text = self.encoder.model.init(r_text, ids, jnp.ones_like(ids))["params"]
        return self.gen.init_boxed(r_gen), {"text_encoder": text}

    def pretrained(self) -> dict[str, Any]:
        return {"text_encoder": self.encoder.params}

    def condition(self, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[Any, jax.Array]:
        feats = self.encoder.features(frozen["text_encoder"], batch["text_ids"], batch["text_mask"])
        mask = batch["text_mask"] > 0
        # "" tokenises to [CLS] [SEP] alone: the null prompt.
        null = jnp.sum(batch["text_mask"], axis=-1) <= 2
        cond = TextCondition(tokens=jax.lax.stop_gradient(feats.tokens), mask=mask,
                             pooled=jax.lax.stop_gradient(feats.pooled), null=null)
        return cond, rng

    def dataset(self, source: Any = None):
        ds = self.fixed_length_dataset(self.source() if source is None else source, keys=("tokens", "label", "caption"))
        return ds.map(_EncodeCaptions(self.encoder.tokenizer, self.text_length))

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "captions": "records"}
