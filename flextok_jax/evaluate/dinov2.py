"""DINOv2 ViT (facebookresearch/dinov2) in Flax, from a local safetensors file in torch key names.

Used as the REPA teacher (patch tokens) and for FD-DINOv2 (class token). The forward is the
official ``forward_features``: patch conv (stride = patch) -> [cls, registers, patches] with the
position embedding added to cls and patches (registers get none) -> pre-norm blocks with
LayerScale (``x += ls1(attn(norm1 x))``, ``x += ls2(mlp(norm2 x))``, exact GELU, LayerNorm eps
1e-6) -> final norm. Other image sizes resample the position grid as dinov2's
``interpolate_pos_encoding``: bicubic (a = -0.75, no antialias) with *scale factor*
(n + offset) / M, offset 0.1, rather than an output size.

Preprocessing as REPA's (``preprocess_raw_image``): images in [0, 1] are normalised with the
ImageNet mean/std first, then resized bicubically (torch's kernel) to 224 * (resolution // 256).
Our images are in [-1, 1]; ``preprocess`` maps them to [0, 1] first.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.checkpoint_official import read_safetensors_metadata
from flextok_jax.evaluate.resize import torch_resize
from flextok_jax.evaluate.torch_weights import WeightsError, params_from_torch, read_safetensors
from flextok_jax.model.layers import attention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6
BASE_RESOLUTION = 224  # the input size the hub models (and FD-DINOv2) use


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
    """Architecture of a DINOv2 ViT; ``pos_grid`` is the side of the stored position grid (16 at 224/14)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    patch_size: int = 14
    pos_grid: int = 16
    num_register_tokens: int = 0
    interpolate_offset: float = 0.1


def _dense(features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def _layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=LN_EPS,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


class LayerScale(nn.Module):
    """x * gamma, gamma [D] (param ``gamma``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)), (x.shape[-1],))
        return x * gamma


class DinoBlock(nn.Module):
    """Pre-norm ViT block with biased qkv / proj / MLP and LayerScale. [B, N, D] -> [B, N, D]."""

    num_heads: int
    mlp_hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        head_dim = d // self.num_heads
        # qkv rows are ordered (q | k | v), each head-major.
        qkv = _dense(3 * d, ("embed", "heads"), "qkv")(_layer_norm("norm1")(x)).reshape(b, n, 3, self.num_heads, head_dim)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], head_dim**-0.5).reshape(b, n, d)
        x = x + LayerScale(name="ls1")(_dense(d, ("heads", "embed"), "proj")(out))
        h = nn.gelu(_dense(self.mlp_hidden, ("embed", "mlp"), "fc1")(_layer_norm("norm2")(x)), approximate=False)
        return x + LayerScale(name="ls2")(_dense(d, ("mlp", "embed"), "fc2")(h))


class PatchEmbed(nn.Module):
    """Non-overlapping patch conv: [B, H, W, 3] -> [B, H // p, W // p, D] (remainder rows dropped)."""

    patch_size: int
    embed_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, d = self.patch_size, self.embed_dim
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
            (p, p, x.shape[-1], d),
        )
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)), (d,))
        y = jax.lax.conv_general_dilated(x, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


def interpolate_pos_embed(pos_embed: jax.Array, grid: tuple[int, int], offset: float) -> jax.Array:
    """[1, 1 + M*M, D] -> [1, 1 + h*w, D] for a (h, w) patch grid, as dinov2's
    ``interpolate_pos_encoding`` (the class entry is kept; unchanged when h*w = M*M and h = w)."""
    n, d = pos_embed.shape[1] - 1, pos_embed.shape[2]
    m = math.isqrt(n)
    h, w = grid
    if h * w == n and h == w:
        return pos_embed
    patches = pos_embed[:, 1:].reshape(1, m, m, d)
    if offset:
        scale = ((h + offset) / m, (w + offset) / m)
        patches = torch_resize(patches, method="bicubic", scale_factor=scale)
    else:
        patches = torch_resize(patches, (h, w), method="bicubic")
    if patches.shape[1:3] != (h, w):
        raise ValueError(f"position grid resampled to {patches.shape[1:3]}, expected {(h, w)}")
    return jnp.concatenate([pos_embed[:, :1], patches.reshape(1, h * w, d)], axis=1)


class DinoV2(nn.Module):
    """DINOv2 ``forward_features``. x [B, H, W, 3], already normalised (see ``preprocess``) ->

    ``x_norm_clstoken`` [B, D], ``x_norm_regtokens`` [B, R, D], ``x_norm_patchtokens`` [B, h*w, D]
    (row-major patch grid, h = H // patch), ``x_prenorm`` [B, 1 + R + h*w, D]. ``precision``: the
    matmul precision of the whole forward ("highest" = true float32 on accelerators too).
    """

    config: DinoV2Config
    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        with jax.default_matmul_precision(self.precision):
            d = cfg.embed_dim
            tokens = PatchEmbed(cfg.patch_size, d, name="patch_embed")(x.astype(jnp.float32))
            b, h, w, _ = tokens.shape
            tokens = tokens.reshape(b, h * w, d)

            def table(name: str, rows: int) -> jax.Array:
                init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "positions", "embed"))
                return self.param(name, init, (1, rows, d))

            cls = table("cls_token", 1)
            pos = interpolate_pos_embed(table("pos_embed", 1 + cfg.pos_grid**2), (h, w), cfg.interpolate_offset)
            tokens = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), tokens], axis=1) + pos
            r = cfg.num_register_tokens
            if r:
                regs = jnp.broadcast_to(table("register_tokens", r), (b, r, d))
                tokens = jnp.concatenate([tokens[:, :1], regs, tokens[:, 1:]], axis=1)
            for i in range(cfg.depth):
                tokens = DinoBlock(cfg.num_heads, cfg.mlp_hidden, name=f"blocks_{i}")(tokens)
            normed = _layer_norm("norm")(tokens)
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : 1 + r],
            "x_norm_patchtokens": normed[:, 1 + r :],
            "x_prenorm": tokens,
        }


def repa_resolution(image_size: int) -> int:
    """REPA's teacher input size 224 * (resolution // 256), at least 224 (REPA's rule gives 0 below 256)."""
    return BASE_RESOLUTION * max(1, image_size // 256)


def preprocess(images: jax.Array, size: int) -> jax.Array:
    """images [B, H, W, 3] in [-1, 1] -> ImageNet-normalised, then bicubic (torch) to [B, size, size, 3]."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = ((images.astype(jnp.float32) + 1.0) * 0.5 - mean) / std
    return torch_resize(x, (size, size), "bicubic")


# --- weights ---------------------------------------------------------------------------------

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "gamma": "gamma"}
_SUBLAYERS = {"qkv": "attn", "proj": "attn", "fc1": "mlp", "fc2": "mlp"}


def _torch_key(path: tuple[str, ...]) -> str:
    """Our parameter path -> the official state-dict key (``blocks_0/qkv/kernel`` -> ``blocks.0.attn.qkv.weight``)."""
    if len(path) == 1:  # cls_token, pos_embed, register_tokens
        return path[0]
    *modules, leaf = path
    names = []
    for m in modules:
        names += [_SUBLAYERS[m]] if m in _SUBLAYERS else []
        names.append("patch_embed.proj" if m == "patch_embed" else m.replace("blocks_", "blocks."))
    return ".".join(names + [_LEAF_NAMES[leaf]])


def config_from_weights(tensors: dict[str, np.ndarray], metadata: dict[str, str], num_heads: int | None, source: str) -> DinoV2Config:
    """Sizes from the tensor shapes; heads (not visible in the shapes) from ``num_heads``, else the
    file's JSON ``config`` metadata, else embed_dim // 64 (every released DINOv2)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in tensors:
            hint = " (SwiGLU FFN checkpoints such as ViT-g are not supported)" if key.startswith("blocks.0.mlp") else ""
            raise WeightsError(f"{source}: missing tensor {key!r}{hint}")
    meta_cfg: dict[str, Any] = {}
    if "config" in metadata:
        try:
            meta_cfg = json.loads(metadata["config"])
        except json.JSONDecodeError as e:
            raise WeightsError(f"{source}: metadata 'config' is not JSON ({e})") from e
    d = tensors["cls_token"].shape[-1]
    heads = num_heads or int(meta_cfg.get("num_heads", 0)) or d // 64
    n_pos = tensors["pos_embed"].shape[1] - 1
    m = math.isqrt(n_pos)
    if m * m != n_pos or d % heads:
        raise WeightsError(f"{source}: pos_embed {tensors['pos_embed'].shape} / {heads} heads do not fit a square ViT of width {d}")
    if meta_cfg.get("interpolate_antialias"):
        raise WeightsError(f"{source}: interpolate_antialias=True is not supported")
    depth = len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})
    return DinoV2Config(
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        mlp_hidden=tensors["blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=tensors["patch_embed.proj.weight"].shape[-1],
        pos_grid=m,
        num_register_tokens=tensors["register_tokens"].shape[1] if "register_tokens" in tensors else 0,
        interpolate_offset=float(meta_cfg.get("interpolate_offset", 0.1)),
    )


def dinov2_init_boxed(model: DinoV2, rng: jax.Array) -> Any:
    """Boxed (logically partitioned) random params of ``model``: the shapes and axes a train
    state needs to hold DINOv2 weights as sharded frozen parameters."""
    size = model.config.pos_grid * model.config.patch_size
    return model.init(rng, jnp.zeros((1, size, size, 3)))["params"]


def load_dinov2(path: str | os.PathLike, num_heads: int | None = None, precision: str | None = "highest") -> tuple[DinoV2, dict]:
    """(model, params) from a DINOv2 safetensors file in the official torch key names.

    Every tensor is checked (missing / unexpected / shape, naming the key and both shapes);
    ``mask_token`` (used only in training) may be present.
    """
    path = os.fspath(path)
    tensors = read_safetensors(path)
    config = config_from_weights(tensors, read_safetensors_metadata(path), num_heads, path)
    model = DinoV2(config, precision)
    abstract = jax.eval_shape(lambda rng: dinov2_init_boxed(model, rng), jax.random.key(0))
    params = params_from_torch(tensors, abstract, _torch_key, path, ignored=("mask_token",))
    return model, params


# --- uses ------------------------------------------------------------------------------------


def patch_features(model: DinoV2, params: Any, images: jax.Array) -> jax.Array:
    """REPA targets: images [B, H, W, 3] in [-1, 1] (square) -> x_norm_patchtokens [B, Np, D] at
    REPA's input size ``repa_resolution(H)``."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"REPA teacher expects square images, got {images.shape}")
    x = preprocess(images, repa_resolution(images.shape[1]))
    return model.apply({"params": params}, x)["x_norm_patchtokens"]


def cls_features(model: DinoV2, params: Any, images: jax.Array) -> jax.Array:
    """FD-DINOv2 features: images [B, H, W, 3] in [-1, 1] -> x_norm_clstoken [B, D] at 224x224."""
    x = preprocess(images, BASE_RESOLUTION)
    return model.apply({"params": params}, x)["x_norm_clstoken"]

