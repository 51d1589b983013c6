"""Generator parameter files: safetensors with '/'-joined keys and the config as JSON metadata.

Nothing is pickled and nothing in the metadata is evaluated: the config is parsed with
``json.loads`` and validated by ``GeneratorConfig.from_dict``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax

from flextok_jax.generator.config import GeneratorConfig
from flextok_jax.generator.model import Generator
from flextok_jax.params_io import check_param_shapes, read_param_file, write_param_file

FORMAT = "flextok_jax/generator/1"


def save_params(path: str | os.PathLike, params: Any, config: GeneratorConfig) -> None:
    """Write generator params (nested dicts of arrays, possibly sharded) and their config to one
    safetensors file (``params_io.write_param_file``)."""
    write_param_file(path, params, {"format": FORMAT, "config": json.dumps(config.to_dict())})


def load_generator(path: str | os.PathLike):
    """(Generator, params as a numpy pytree) from a file written by ``save_params``.

    Every parameter's shape is checked against the config's architecture; a missing, extra or
    mis-shaped tensor is an error naming the key and both shapes.
    """
    params, meta = read_param_file(path, FORMAT)
    try:
        config = GeneratorConfig.from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{os.fspath(path)}: unreadable generator config metadata ({e!r})") from e
    gen = Generator(config)
    check_param_shapes(path, params, jax.eval_shape(gen.init, jax.random.key(0)))
    return gen, params
