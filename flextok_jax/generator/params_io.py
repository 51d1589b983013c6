"""Generator parameter files: safetensors with '/'-joined keys and the config as JSON metadata.

Nothing is pickled and nothing in the metadata is evaluated: the config is parsed with
``json.loads`` and validated by ``GeneratorConfig.from_dict``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from flextok_jax.checkpoint_official import read_safetensors_metadata
from flextok_jax.generator.config import GeneratorConfig

FORMAT = "flextok_jax/generator/1"


def save_params(path: str | os.PathLike, params: Any, config: GeneratorConfig) -> None:
    """Write generator params (nested dicts of arrays, possibly sharded) and their config to one
    safetensors file, through a temporary file renamed into place (no truncated file on a crash)."""
    path = os.fspath(path)
    flat = traverse_util.flatten_dict(params, sep="/")
    arrays = {key: np.asarray(jax.device_get(value)) for key, value in flat.items()}
    tmp = path + ".tmp"
    save_file(arrays, tmp, metadata={"format": FORMAT, "config": json.dumps(config.to_dict())})
    os.replace(tmp, path)


def load_generator(path: str | os.PathLike):
    """(Generator, params as a numpy pytree) from a file written by ``save_params``.

    Every parameter's shape is checked against the config's architecture; a missing, extra or
    mis-shaped tensor is an error naming the key and both shapes.
    """
    from flextok_jax.generator.model import Generator

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no generator parameter file at {path}")
    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        config = GeneratorConfig.from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable generator config metadata ({e!r})") from e
    gen = Generator(config)
    flat = load_file(path)
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(jax.eval_shape(gen.init, jax.random.key(0)), sep="/").items()}
    for key in sorted(set(want) | set(flat)):
        got = tuple(flat[key].shape) if key in flat else None
        if want.get(key) != got:
            raise ValueError(f"{path}: parameter {key!r} has shape {got}, expected {want.get(key)} (None = absent)")
    return gen, traverse_util.unflatten_dict(flat, sep="/")
