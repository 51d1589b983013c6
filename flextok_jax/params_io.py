"""Our own parameter files: safetensors with '/'-joined keys and the config as JSON metadata.

Nothing is pickled and nothing in the metadata is evaluated: the config is parsed with
``json.loads`` into plain values and validated field by field by ``FlexTokConfig.from_dict``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from flextok_jax.checkpoint_official import load_official_checkpoint, read_safetensors_metadata
from flextok_jax.hub import resolve_checkpoint
from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.flextok import FlexTok

FORMAT = "flextok_jax/1"


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {'a/b/c': host array}; a '/' inside a name would be ambiguous."""
    flat = traverse_util.flatten_dict(tree)
    for path in flat:
        for name in path:
            if "/" in str(name):
                raise ValueError(f"parameter name {name!r} contains '/', which the file format reserves")
    return {"/".join(map(str, path)): np.asarray(jax.device_get(v)) for path, v in flat.items()}


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {key: tuple(np.shape(v)) for key, v in traverse_util.flatten_dict(tree, sep="/").items()}


def write_param_file(path: str | os.PathLike, params: Any, metadata: dict[str, str]) -> None:
    """Any params pytree (nested dicts of arrays, possibly sharded) -> one safetensors file with
    '/'-joined keys and string ``metadata``, through a temporary file renamed into place (a crash
    never leaves a truncated file under ``path``). Every parameter file of the package is one."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file(_flatten(params), tmp, metadata=metadata)
    os.replace(tmp, path)


def read_param_file(path: str | os.PathLike, fmt: str, hint: str = "") -> tuple[dict, dict[str, str]]:
    """(params as a numpy pytree, metadata) of a ``write_param_file`` file whose metadata format
    is ``fmt``; FileNotFoundError / ValueError naming the file otherwise (``hint`` says what to
    use instead)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no parameter file at {path}")
    meta = read_safetensors_metadata(path)
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected {fmt!r}{hint}")
    return traverse_util.unflatten_dict(load_file(path), sep="/"), meta


def check_param_shapes(path: str | os.PathLike, params: Any, expected: Any) -> None:
    """ValueError naming the file, the key and both shapes (None = absent) unless ``params`` has
    exactly the leaves and shapes of ``expected`` (e.g. ``jax.eval_shape`` of an init)."""
    want, got = _flat_shapes(expected), _flat_shapes(params)
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ValueError(f"{os.fspath(path)}: parameter {key!r} has shape {got.get(key)}, expected {want.get(key)}")


def save_params(path: str | os.PathLike, params: Any, config: FlexTokConfig | None = None) -> None:
    """Write tokenizer params (and their config as JSON) to one safetensors file."""
    metadata = {"format": FORMAT}
    if config is not None:
        metadata["config"] = json.dumps(config.to_dict())
    write_param_file(path, params, metadata)


def load_params(path: str | os.PathLike) -> tuple[dict, FlexTokConfig | None]:
    """Read a file written by ``save_params``: (params as numpy pytree, config or None)."""
    params, meta = read_param_file(path, FORMAT, " (for official FlexTok checkpoints use load_official_checkpoint)")
    config = None
    if "config" in meta:
        try:
            config = FlexTokConfig.from_dict(json.loads(meta["config"]))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ValueError(f"{os.fspath(path)}: unreadable config metadata ({e})") from e
    return params, config


def load_model(path: str | os.PathLike, dtype: Any = np.float32):
    """(FlexTok, params) from a file written by ``save_params`` with its config."""
    params, config = load_params(path)
    if config is None:
        raise ValueError(f"{os.fspath(path)} holds no config; build FlexTok(config) yourself and use load_params")
    model = FlexTok(config, dtype=dtype)
    check_param_shapes(path, params, jax.eval_shape(model.init, jax.random.key(0)))
    return model, params

# The file name of a trained tokenizer's export (``WORKDIR/export/flextok.safetensors``).
EXPORT_FILE = "flextok.safetensors"


def load_checkpoint(path: str | os.PathLike, vae_config: str | None = None, dtype: Any = np.float32) -> tuple[FlexTok, Any]:
    """(FlexTok, params) from an official checkpoint or one of ours (a path or a hub repository
    id such as EPFL-VILAB/flextok_d18_d28_dfn), told apart by its metadata."""
    path = resolve_checkpoint(path)
    meta = read_safetensors_metadata(path)
    if meta.get("format") == FORMAT:
        return load_model(path, dtype=dtype)
    vae = None
    if vae_config:
        with open(vae_config) as f:
            vae = json.load(f)
    return load_official_checkpoint(path, vae_config=vae, dtype=dtype)
