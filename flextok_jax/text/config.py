"""The architecture of a BERT sentence encoder, read from a Hugging Face ``config.json``.

Only the fields this port implements are read; each is type- and value-checked, and anything
that would make our computation differ from the checkpoint's (another activation, relative
position embeddings, a non-BERT model type) is rejected with the file and the value found.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping


class TextConfigError(ValueError):
    """A text-encoder config.json that this port does not implement."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Post-LN BERT encoder. Defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise TextConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "BertConfig":
        """Validated config from a parsed ``config.json`` dict (``source`` names it in errors)."""

        def positive_int(name: str, default: Any = KeyError) -> int:
            if name not in raw:
                if default is KeyError:
                    raise TextConfigError(f"{source}: missing field {name!r}")
                return default
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TextConfigError(f"{source}: {name} must be a positive integer, found {value!r}")
            return value

        act = raw.get("hidden_act")
        # "gelu" is the exact erf form in transformers; the tanh approximations have other names.
        if act != "gelu":
            raise TextConfigError(f"{source}: hidden_act must be 'gelu' (exact erf GELU), found {act!r}")
        pos = raw.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise TextConfigError(f"{source}: position_embedding_type must be 'absolute', found {pos!r}")
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise TextConfigError(f"{source}: model_type must be 'bert', found {model_type!r}")
        eps = raw.get("layer_norm_eps")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1e-3:
            raise TextConfigError(f"{source}: layer_norm_eps must be a number in (0, 1e-3), found {eps!r}")
        return cls(
            vocab_size=positive_int("vocab_size"),
            hidden_size=positive_int("hidden_size"),
            num_hidden_layers=positive_int("num_hidden_layers"),
            num_attention_heads=positive_int("num_attention_heads"),
            intermediate_size=positive_int("intermediate_size"),
            max_position_embeddings=positive_int("max_position_embeddings"),
            type_vocab_size=positive_int("type_vocab_size", 2),
            layer_norm_eps=float(eps),
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        """Read and validate a Hugging Face BERT ``config.json`` (plain JSON, nothing evaluated)."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise TextConfigError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise TextConfigError(f"{path}: expected a JSON object, found {type(raw).__name__}")
        return cls.from_dict(raw, source=path)
