"""Frozen feature-network weights from safetensors files in torch's key names and layouts.

Only safetensors is read (no pickle, nothing executed). Every parameter of the Flax module must
have exactly one tensor of the right shape; the errors name the key and both shapes.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

Path = tuple[str, ...]


class WeightsError(ValueError):
    """A weights file does not match the network it is loaded into."""


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e


def to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    """Our layout -> torch's: conv HWIO -> OIHW, dense [in, out] -> [out, in], others as they are."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    """Inverse of ``to_torch_layout``: conv OIHW -> HWIO, linear [out, in] -> [in, out]."""
    if leaf == "kernel" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch-layout shape of one of our parameters."""
    return tuple(to_torch_layout(leaf, np.empty(shape, np.bool_)).shape)


def params_from_torch(
    tensors: Mapping[str, np.ndarray],
    abstract_params: Any,
    torch_key: Callable[[Path], str],
    source: str,
    ignored: Iterable[str] = (),
) -> dict:
    """torch-named tensors -> a nested params dict (float32 numpy) with our layouts.

    ``abstract_params``: the module's params tree (shapes; boxes are fine), e.g. from
    ``jax.eval_shape(module.init, ...)["params"]``; ``torch_key(path)`` names the tensor of the
    parameter at ``path``; keys in ``ignored`` may be present or absent (unused buffers such as
    BatchNorm's ``num_batches_tracked``). Raises ``WeightsError`` listing every missing,
    unexpected or mis-shaped tensor.
    """
    shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.meta.unbox(abstract_params))
    flat = traverse_util.flatten_dict(shapes, is_leaf=lambda _, x: isinstance(x, tuple))
    ignored = set(ignored)
    params: dict[Path, np.ndarray] = {}
    problems: list[str] = []
    used: set[str] = set()
    for path, shape in flat.items():
        key = torch_key(path)
        want = torch_shape(path[-1], shape)
        if key not in tensors:
            problems.append(f"missing tensor {key!r} (expected shape {want})")
            continue
        got = tuple(np.shape(tensors[key]))
        if got != want:
            problems.append(f"tensor {key!r} has shape {got}, expected {want}")
            continue
        params[path] = from_torch_layout(path[-1], np.asarray(tensors[key], np.float32))
        used.add(key)
    extra = sorted(set(tensors) - used - ignored)
    problems += [f"unexpected tensor {k!r} with shape {tuple(np.shape(tensors[k]))}" for k in extra]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightsError(f"{source}: {len(problems)} problem(s) with the weights:\n  {shown}{more}")
    return traverse_util.unflatten_dict(params)

