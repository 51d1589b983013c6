"""Captioned Fashion-MNIST: caption templates over the ten class names and simple attributes.

Fashion-MNIST has no captions, so each image's caption is made from its class: a template
filled with the class's noun phrase (``NOUNS``) and its category (``CATEGORIES``: top, bottom,
footwear, ...; the only attribute the labels support truthfully; the images are greyscale
28 px, so colours or materials would be invented).

``TRAIN_TEMPLATES`` caption the training images (one drawn at random per image and step).
``HELD_OUT_TEMPLATES`` are paraphrases that training never sees, for checking that the model
follows the meaning of a prompt rather than its exact wording:

    "an image showing {a_noun}"
    "here is {a_noun}, a kind of {category}"
    "{category}: {noun}, pictured on its own"

The MiniLM features of every distinct caption (10 classes x 8 templates = 80 training captions)
are computed once (``caption_features``) and looked up by index in the train step.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Fashion-MNIST label order (as flextok_jax.evaluate.classifier.CLASS_NAMES), as noun phrases.
NOUNS = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot")
CATEGORIES = ("top", "bottom", "top", "dress", "outerwear", "footwear", "top", "footwear", "accessory",
              "footwear")
NUM_CLASSES = len(NOUNS)

TRAIN_TEMPLATES = (
    "{a_noun}",
    "a photo of {a_noun}",
    "a picture of {a_noun}",
    "a black and white photo of {a_noun}",
    "a small greyscale image of {a_noun}",
    "{a_noun}, an item of {category}",
    "a product photo of {a_noun}",
    "{category}: {noun}",
)
HELD_OUT_TEMPLATES = (
    "an image showing {a_noun}",
    "here is {a_noun}, a kind of {category}",
    "{category}: {noun}, pictured on its own",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(label: int, template: str) -> str:
    """The caption of class ``label`` (0..9) in ``template``."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"Fashion-MNIST label must lie in [0, {NUM_CLASSES}), got {label}")
    noun = NOUNS[int(label)]
    return template.format(noun=noun, a_noun=_article(noun), category=CATEGORIES[int(label)])


def caption_table(templates: Sequence[str] = TRAIN_TEMPLATES) -> tuple[list[str], np.ndarray]:
    """(captions, ids int32 [NUM_CLASSES, len(templates)]): every class in every template;
    ``captions[ids[label, j]]`` is class ``label`` in template j. Duplicates are stored once."""
    captions: list[str] = []
    where: dict[str, int] = {}
    ids = np.zeros((NUM_CLASSES, len(templates)), np.int32)
    for label in range(NUM_CLASSES):
        for j, template in enumerate(templates):
            text = caption(label, template)
            if text not in where:
                where[text] = len(captions)
                captions.append(text)
            ids[label, j] = where[text]
    return captions, ids


def caption_features(encoder: Any, captions: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """MiniLM features of ``captions``, each padded to ``max_length`` tokens: {'tokens' float32
    [C, max_length, D], 'mask' float32 [C, max_length] (1 = real token), 'pooled' float32 [C, D]}.
    ``encoder``: a ``flextok_jax.text.MiniLM``; a caption longer than ``max_length`` is truncated
    (with the tokenizer's warning)."""
    out = encoder.encode(list(captions), max_length=max_length)
    return {"tokens": np.asarray(out.tokens, np.float32), "mask": np.asarray(out.mask, np.float32),
            "pooled": np.asarray(out.pooled, np.float32)}
