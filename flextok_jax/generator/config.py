"""The architecture of an autoregressive generator over FlexTok token ids, conditioned on a class
label or on a text prompt (sentence-encoder features)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from flextok_jax.model.layers import mlp_hidden_dim

DTYPES = ("float32", "bfloat16")
CONDITIONS = ("class", "text")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Decoder-only transformer over ``max_tokens`` FlexTok ids, conditioned on a prefix.

    ``condition='class'``: the prefix is one class embedding (``num_classes`` rows + the null
    row). ``condition='text'``: the prefix is ``max_text_tokens`` per-token text features and the
    pooled text vector, each projected from ``text_dim`` to ``dim`` (see ``network``);
    ``num_classes`` must be 0 (there is no class table).

    Attention is ``num_heads`` heads of ``head_dim`` (their width ``num_heads * head_dim`` equals
    ``dim`` in every preset, but need not). ``dtype`` is the computation dtype; parameters are
    float32 and logits float32 whatever it is.
    """

    vocab_size: int
    max_tokens: int
    num_classes: int
    depth: int
    dim: int
    num_heads: int
    head_dim: int = 64
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    norm_eps: float = 1e-6
    dtype: str = "float32"
    # One more id, ``eos_id`` = vocab_size, after an image's last token: the generator then
    # chooses each image's k (``generate(num_tokens=None)``).
    eos: bool = False
    condition: str = "class"
    # Text conditioning (condition='text'): the encoder's width (all-MiniLM-L6-v2: 384) and the
    # number of per-token feature slots of the prefix (longer prompts are cut by the caller).
    text_dim: int = 384
    max_text_tokens: int = 32

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"GeneratorConfig.condition must be one of {CONDITIONS}, got {self.condition!r}")
        positive = ["vocab_size", "max_tokens", "depth", "dim", "num_heads", "head_dim", "text_dim", "max_text_tokens"]
        for name in positive + (["num_classes"] if self.condition == "class" else []):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GeneratorConfig.{name} must be a positive int, got {value!r}")
        if self.condition == "text" and self.num_classes != 0:
            raise ValueError(f"GeneratorConfig.num_classes must be 0 for condition='text' (no class table), "
                             f"got {self.num_classes!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"GeneratorConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"GeneratorConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not isinstance(self.eos, bool):
            raise ValueError(f"GeneratorConfig.eos must be a bool, got {self.eos!r}")

    @property
    def num_ids(self) -> int:
        """Rows of the token table and outputs of the head: the FlexTok ids, plus EOS if ``eos``."""
        return self.vocab_size + int(self.eos)

    @property
    def eos_id(self) -> int:
        """The end-of-sequence id (vocab_size); ValueError for a model without one."""
        if not self.eos:
            raise ValueError("this generator has no end-of-sequence token (GeneratorConfig.eos=False)")
        return self.vocab_size

    @property
    def null_label(self) -> int:
        """The class-table row of the unconditional (classifier-free guidance) condition."""
        return self.num_classes

    @property
    def prefix_offset(self) -> int:
        """Sequence positions before the one that predicts token 0: 0 for a class model (the
        class is position 0), ``max_text_tokens`` for a text model (the text slots come first,
        the pooled vector then sits where the class would)."""
        return self.max_text_tokens if self.condition == "text" else 0

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def mlp_dim(self) -> int:
        return mlp_hidden_dim(self.dim, self.mlp_ratio)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "GeneratorConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the inverse of ``from_dict``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        """Build from plain values (as written by ``to_dict``); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GeneratorConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def non_embedding_params(cfg: GeneratorConfig) -> int:
    """Parameters of the transformer blocks and the final norm: everything but the token, class
    and position tables, the text projections and the vocabulary head (the usual scaling-law count)."""
    attn = 4 * cfg.dim * cfg.attn_dim + (2 * cfg.head_dim if cfg.qk_norm else 0)
    mlp = 3 * cfg.dim * cfg.mlp_dim
    return cfg.depth * (attn + mlp + 2 * cfg.dim) + cfg.dim


# The FlexTok AR family: depth L, width 64 L, L heads of 64.
AR_DEPTHS = (10, 12, 16, 20, 24, 30)


def preset(name: str, **overrides: Any) -> GeneratorConfig:
    """A named size: 'd10' .. 'd30' (depth L, dim 64 L, L heads; ImageNet-1k classes, the
    released 64,000-id FSQ vocabulary, 256 tokens) or 'tiny' (depth 2, dim 64, 2 heads of 32,
    vocabulary 64,000, 16 tokens, 10 classes; for CPU tests and demos). ``overrides`` replace fields;
    ``condition='text'`` drops the class table (num_classes 0).
    """
    if name == "tiny":
        base = dict(vocab_size=64000, max_tokens=16, num_classes=10, depth=2, dim=64, num_heads=2, head_dim=32)
    elif name.startswith("d") and name[1:].isdigit() and int(name[1:]) in AR_DEPTHS:
        depth = int(name[1:])
        base = dict(vocab_size=64000, max_tokens=256, num_classes=1000, depth=depth, dim=64 * depth, num_heads=depth)
    else:
        raise ValueError(f"unknown generator preset {name!r}; expected 'tiny' or one of {[f'd{d}' for d in AR_DEPTHS]}")
    if overrides.get("condition") == "text":
        base["num_classes"] = 0
    return GeneratorConfig(**{**base, **overrides})
