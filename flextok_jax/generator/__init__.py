"""Autoregressive generator over FlexTok token ids, conditioned on a class or on text.

``Generator`` (model, teacher-forced logits, KV-cache pieces), ``generate`` / ``Generator.generate``
(the one-program sampler), ``next_token_loss`` (for the training system), ``save_params`` /
``load_generator`` (safetensors files), ``generate_images`` (labels -> images via a FlexTok) and
the size presets. ``TextCondition`` is the condition of a text model (``condition='text'``).
"""
from flextok_jax.generator.conditioning import TextCondition
from flextok_jax.generator.config import AR_DEPTHS, GeneratorConfig, non_embedding_params, preset
from flextok_jax.generator.images import generate_images, generate_images_by_k
from flextok_jax.generator.loss import drop_labels, eos_targets, next_token_loss, position_bands
from flextok_jax.generator.model import Generator
from flextok_jax.generator.params_io import load_generator, save_params
from flextok_jax.generator.sampler import PAD_TOKEN, SCHEDULES, generate

__all__ = [
    "AR_DEPTHS",
    "GeneratorConfig",
    "Generator",
    "PAD_TOKEN",
    "SCHEDULES",
    "TextCondition",
    "drop_labels",
    "eos_targets",
    "generate",
    "generate_images",
    "generate_images_by_k",
    "load_generator",
    "next_token_loss",
    "non_embedding_params",
    "position_bands",
    "preset",
    "save_params",
]
