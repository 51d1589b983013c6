"""The architecture of a FlexTok model as one frozen dataclass.

Everything here is read from an official checkpoint's metadata (``checkpoint_official``) or from an
ml-collections config (``model_config_from_configdict``); nothing is a hidden constant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flextok_jax.model.fsq import codebook_size
from flextok_jax.model.vae import STANDARD_VAE, VAEConfig


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Width, depth and head size of one transformer trunk."""

    dim: int
    depth: int
    head_dim: int = 64
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.dim % self.head_dim:
            raise ValueError(f"transformer dim {self.dim} is not a multiple of head_dim {self.head_dim}")


@dataclasses.dataclass(frozen=True)
class FlexTokConfig:
    """FlexTok stage-1 architecture.

    ``patch_grid`` is the largest latent patch grid the position embeddings cover; the image size
    is ``patch_grid * patch_size * vae_downsample``. ``vae`` is a ``VAEConfig`` or None for a
    pixel-space model (the "VAE" is then the identity and ``latent_channels`` must be 3).
    """

    encoder: TransformerConfig
    decoder: TransformerConfig
    n_registers: int = 256
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    latent_channels: int = 16
    patch_size: tuple[int, int] = (2, 2)
    patch_grid: tuple[int, int] = (16, 16)
    vae: Any = None
    vae_scaling_factor: float = 1.0
    vae_shift_factor: float = 0.0
    vae_sample_posterior: bool = False
    max_timestep: float = 1.0
    repa_layer: int | None = None
    # Where the decoder adds its register position embedding relative to nested dropout.
    # The official models add it before, so masked registers are all identical (issue 5).
    register_posemb_before_dropout: bool = True

    def __post_init__(self):
        if self.repa_layer is not None and not 0 <= self.repa_layer < self.decoder.depth:
            raise ValueError(f"repa_layer {self.repa_layer} outside [0, {self.decoder.depth})")

    @property
    def vocab_size(self) -> int:
        return codebook_size(self.fsq_levels)

    @property
    def code_dim(self) -> int:
        return len(self.fsq_levels)

    @property
    def vae_downsample(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def image_size(self) -> tuple[int, int]:
        f = self.vae_downsample
        return (
            self.patch_grid[0] * self.patch_size[0] * f,
            self.patch_grid[1] * self.patch_size[1] * f,
        )

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_size[0] * self.patch_size[1] * self.latent_channels

    def replace(self, **changes: Any) -> "FlexTokConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the inverse of ``from_dict``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FlexTokConfig":
        """Build from plain values only (as written by ``to_dict``); unknown keys are errors."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FlexTokConfig fields {unknown}; known: {sorted(known)}")
        d["encoder"] = TransformerConfig(**d["encoder"])
        d["decoder"] = TransformerConfig(**d["decoder"])
        if d.get("vae") is not None:
            vae = dict(d["vae"])
            vae["block_out_channels"] = tuple(vae["block_out_channels"])
            d["vae"] = VAEConfig(**vae)
        for key in ("fsq_levels", "patch_size", "patch_grid"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def from_configdict(model: Mapping[str, Any]) -> FlexTokConfig:
    """``FlexTokConfig`` from the ``config.model`` section of an ml-collections config.

    Fields: ``encoder`` / ``decoder`` (dim, depth, head_dim, mlp_ratio), ``n_registers``,
    ``fsq_levels``, ``latent_channels``, ``patch_size``, ``patch_grid``, ``vae`` (None, the
    string 'standard', or a dict of ``VAEConfig`` fields), ``vae_scaling_factor``,
    ``vae_shift_factor``, ``max_timestep``, ``repa_layer``.
    """
    d = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in dict(model).items()}
    if d.get("vae") == "standard":
        d["vae"] = dataclasses.asdict(STANDARD_VAE)
    return FlexTokConfig.from_dict(d)
