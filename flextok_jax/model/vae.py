"""AutoencoderKL (the diffusers VAE architecture) in Flax linen, channels-last.

FlexTok tokenizes VAE latents rather than pixels. This module reproduces the
computation of diffusers' ``AutoencoderKL`` so that its checkpoints (as embedded
in the FlexTok safetensors files under ``vae.vae.``) load and give the same
outputs. Images are NHWC in [-1, 1]; latents are NHWC with ``latent_channels``
channels at 1/2**(len(block_out_channels)-1) resolution. The latent scaling
factor is deliberately not part of this module: FlexTok applies it itself.

Parameters are always float32; ``dtype`` only selects the computation dtype.

``AutoencoderKL(conv_impl=, winograd_min_channels=)`` chooses, once, how the 3x3 stride-1
convolutions (most of the FLOPs) are computed; that choice is one ``ConvFactory`` that every
block builds its convs with. "direct" uses ``lax.conv_general_dilated``; "winograd" uses
Winograd F(2x2,3x3) (``flextok_jax.model.winograd``), 2.25x fewer multiplies and equal to the
direct conv up to float32 rounding, for the convs whose input width is at least
``winograd_min_channels`` (narrower ones keep the direct conv, which is faster there on CPU).
1x1 convs are channel matmuls. The parameter tree is the same either way, and as diffusers'.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from flax import traverse_util

from flextok_jax.model.winograd import winograd_conv3x3

Dtype = Any

_GN_EPS = 1e-6
_CONV_AXES = (None, None, "conv_in", "conv_out")
_SUPPORTED_DOWN = "DownEncoderBlock2D"
_SUPPORTED_UP = "UpDecoderBlock2D"
CONV_IMPLS = ("winograd", "direct")
DEFAULT_CONV_IMPL = "winograd"
DEFAULT_WINOGRAD_MIN_CHANNELS = 256


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of an AutoencoderKL; field names follow diffusers' config.json."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        # Accept lists (e.g. straight from JSON) but keep the dataclass hashable.
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not self.block_out_channels:
            raise ValueError("block_out_channels must not be empty")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"every block_out_channels entry must be divisible by norm_num_groups="
                    f"{self.norm_num_groups}; got {self.block_out_channels}"
                )

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction between images and latents (8 for four blocks)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> "VAEConfig":
        """Builds a config from a diffusers ``AutoencoderKL`` config.json dict.

        Keys that do not change the computation of this module (``_class_name``,
        ``sample_size``, ``scaling_factor``, ...) are ignored. Options that would
        change it and that this port does not implement raise ValueError.
        """
        act_fn = d.get("act_fn", "silu")
        if act_fn != "silu":
            raise ValueError(f"unsupported act_fn {act_fn!r}; only 'silu' is implemented")
        for key, allowed in (("down_block_types", _SUPPORTED_DOWN), ("up_block_types", _SUPPORTED_UP)):
            for t in d.get(key, ()):
                if t != allowed:
                    raise ValueError(f"unsupported {key} entry {t!r}; only {allowed!r} is implemented")
        for key in ("use_quant_conv", "use_post_quant_conv"):
            if not d.get(key, True):
                raise ValueError(f"{key}=False is not supported; this port always has the 1x1 conv")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in d and d[f.name] is not None:
                kwargs[f.name] = d[f.name]
        n_blocks = len(kwargs.get("block_out_channels", cls.block_out_channels))
        for key in ("down_block_types", "up_block_types"):
            if key in d and len(d[key]) != n_blocks:
                raise ValueError(f"{key} has {len(d[key])} entries but block_out_channels has {n_blocks}")
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers config.json fields that describe this architecture."""
        n = len(self.block_out_channels)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "mid_block_add_attention": self.mid_block_add_attention,
            "act_fn": "silu",
            "down_block_types": [_SUPPORTED_DOWN] * n,
            "up_block_types": [_SUPPORTED_UP] * n,
        }


STANDARD_VAE = VAEConfig()


CONV_METHODS = ("direct", "winograd", "matmul")


class Conv(nn.Module):
    """k x k conv, channels-last: [B,H,W,Cin] -> [B,H',W',features], params as ``nn.Conv``'s
    (``kernel`` [k,k,Cin,features] HWIO, ``bias`` [features], float32, logical axis names).

    ``method``: "direct" (``lax.conv_general_dilated``), "winograd" (3x3 stride-1 pad-1 only:
    ``winograd_conv3x3``), "matmul" (1x1 only: XLA:CPU runs a 1x1 conv at about half the speed
    of the same channel matmul). ``padding`` defaults to k // 2 on every side, as torch pads,
    spelled out so that no conv depends on flax's stride-dependent 'SAME' rule.
    Inputs and params are cast to ``dtype`` (Winograd's filter transform runs in float32 first).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: Any = None
    method: str = "direct"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if self.method not in CONV_METHODS:
            raise ValueError(f"Conv method must be one of {CONV_METHODS}, got {self.method!r}")
        if (self.method == "winograd" and (k, self.strides, self.padding) != (3, 1, None)) or (
            self.method == "matmul" and (k, self.strides) != (1, 1)
        ):
            raise ValueError(f"method {self.method!r} does not support a {k}x{k} stride-{self.strides} conv")
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), _CONV_AXES),
            (k, k, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)), (self.features,),
            jnp.float32,
        )
        x = x.astype(self.dtype)
        if self.method == "winograd":
            y = winograd_conv3x3(x, kernel, None).astype(self.dtype)
        elif self.method == "matmul":
            y = jnp.einsum("...c,co->...o", x, kernel[0, 0].astype(self.dtype))
        else:
            pad = self.padding if self.padding is not None else ((k // 2, k // 2), (k // 2, k // 2))
            y = jax.lax.conv_general_dilated(
                x, kernel.astype(self.dtype), (self.strides, self.strides), pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return y + bias.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class ConvFactory:
    """The one choice of how the VAE computes its 3x3 stride-1 'same' convs, made once by
    ``AutoencoderKL`` and handed to every block.

    ``impl`` "winograd": Winograd for the convs whose input width is at least
    ``winograd_min_channels`` (the tile matmuls contract over it; at 128 channels XLA's direct conv
    is faster on CPU), direct for the narrower ones; "direct": ``lax.conv_general_dilated`` for all.
    """

    impl: str = DEFAULT_CONV_IMPL
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS

    def __post_init__(self) -> None:
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.impl!r}")

    def conv3x3(self, features: int, in_features: int, *, dtype: Dtype, name: str) -> Conv:
        """A 3x3 stride-1 conv padded by one: [B,H,W,in_features] -> [B,H,W,features]."""
        wide = self.impl == "winograd" and in_features >= self.winograd_min_channels
        return Conv(features, method="winograd" if wide else "direct", dtype=dtype, name=name)


def _group_norm(groups: int, dtype: Dtype, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=_GN_EPS,
        dtype=dtype,
        param_dtype=jnp.float32,
        # The two-pass variance matches torch more closely than E[x^2]-E[x]^2
        # on activations with a large mean (the decoder's mid block has them).
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


class ResnetBlock(nn.Module):
    """GN→SiLU→conv3x3→GN→SiLU→conv3x3 plus (1x1-projected if needed) skip. [B,H,W,Cin]→[B,H,W,Cout]."""

    out_channels: int
    groups: int
    dtype: Dtype = jnp.float32
    convs: ConvFactory = ConvFactory()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.out_channels
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm1")(x))
        h = self.convs.conv3x3(c, x.shape[-1], dtype=self.dtype, name="conv1")(h)
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm2")(h))
        h = self.convs.conv3x3(c, c, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != c:
            x = Conv(c, 1, method="matmul", dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over all H*W positions with a residual. [B,H,W,C]→[B,H,W,C]."""

    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape

        def dense(name: str) -> nn.Dense:
            return nn.Dense(
                c,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_in", "conv_out")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
                name=name,
            )

        h = _group_norm(self.groups, self.dtype, "group_norm")(x).reshape(b, hh * ww, c)
        q, k, v = dense("to_q")(h), dense("to_k")(h), dense("to_v")(h)
        logits = jnp.einsum("bqc,bkc->bqk", q, k) / np.sqrt(c).astype(np.float32)
        # Softmax in float32 even for bf16 compute: the logits span H*W
        # positions and bf16 exp/sum would lose most of the small weights.
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = dense("to_out_0")(jnp.einsum("bqk,bkc->bqc", probs, v))
        return x + out.reshape(b, hh, ww, c)


class MidBlock(nn.Module):
    """resnet → (attention) → resnet at constant width. [B,H,W,C]→[B,H,W,C]."""

    channels: int
    groups: int
    add_attention: bool
    dtype: Dtype = jnp.float32
    convs: ConvFactory = ConvFactory()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock(self.channels, self.groups, self.dtype, self.convs, name="resnets_0")(x)
        if self.add_attention:
            x = SpatialAttention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(self.channels, self.groups, self.dtype, self.convs, name="resnets_1")(x)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then 3x3 stride-2 conv. [B,H,W,C]→[B,H/2,W/2,C]."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Asymmetric padding is what makes the output grid line up with the
        # torch checkpoint; symmetric 'SAME' would shift it by half a pixel.
        return Conv(self.channels, 3, 2, ((0, 1), (0, 1)), dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then 3x3 conv. [B,H,W,C]→[B,2H,2W,C]."""

    channels: int
    dtype: Dtype = jnp.float32
    convs: ConvFactory = ConvFactory()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.convs.conv3x3(self.channels, x.shape[-1], dtype=self.dtype, name="conv")(x)


class _Stage(nn.Module):
    """One diffusers Down/UpEncoderBlock2D: ``num_layers`` resnets at ``channels``, then
    (``resample``) "down" halves or "up" doubles the resolution, None keeps it."""

    channels: int
    groups: int
    num_layers: int
    resample: str | None
    dtype: Dtype = jnp.float32
    convs: ConvFactory = ConvFactory()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.channels, self.groups, self.dtype, self.convs, name=f"resnets_{j}")(x)
        if self.resample == "down":
            x = Downsample(self.channels, self.dtype, name="downsamplers_0")(x)
        elif self.resample == "up":
            x = Upsample(self.channels, self.dtype, self.convs, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """Images [B,H,W,in_channels] → moments [B,H/f,W/f,2*latent_channels] (before quant_conv)."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    convs: ConvFactory = ConvFactory()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, g, convs, dt = self.config, self.config.norm_num_groups, self.convs, self.dtype
        n = len(cfg.block_out_channels)
        x = convs.conv3x3(cfg.block_out_channels[0], x.shape[-1], dtype=dt, name="conv_in")(x)
        for i, ch in enumerate(cfg.block_out_channels):
            down = "down" if i < n - 1 else None
            x = _Stage(ch, g, cfg.layers_per_block, down, dt, convs, name=f"down_blocks_{i}")(x)
        x = MidBlock(cfg.block_out_channels[-1], g, cfg.mid_block_add_attention, dt, convs, name="mid_block")(x)
        x = nn.silu(_group_norm(g, dt, "conv_norm_out")(x))
        return convs.conv3x3(2 * cfg.latent_channels, x.shape[-1], dtype=dt, name="conv_out")(x)


class Decoder(nn.Module):
    """Latents [B,h,w,latent_channels] (after post_quant_conv) → images [B,h*f,w*f,out_channels]."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    convs: ConvFactory = ConvFactory()

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg, g, convs, dt = self.config, self.config.norm_num_groups, self.convs, self.dtype
        rev = tuple(reversed(cfg.block_out_channels))
        x = convs.conv3x3(rev[0], z.shape[-1], dtype=dt, name="conv_in")(z)
        x = MidBlock(rev[0], g, cfg.mid_block_add_attention, dt, convs, name="mid_block")(x)
        for i, ch in enumerate(rev):
            up = "up" if i < len(rev) - 1 else None
            # diffusers' decoder blocks hold one resnet more than the encoder's.
            x = _Stage(ch, g, cfg.layers_per_block + 1, up, dt, convs, name=f"up_blocks_{i}")(x)
        x = nn.silu(_group_norm(g, dt, "conv_norm_out")(x))
        return convs.conv3x3(cfg.out_channels, x.shape[-1], dtype=dt, name="conv_out")(x)


class AutoencoderKL(nn.Module):
    """diffusers-compatible AutoencoderKL; NHWC; params float32, compute in ``dtype``.

    Outputs of ``encode`` and ``decode`` are returned in float32 whatever the
    compute dtype, since they feed the FlexTok tokenizer / image writers.
    """

    config: VAEConfig = STANDARD_VAE
    dtype: Dtype = jnp.float32
    conv_impl: str = DEFAULT_CONV_IMPL  # "winograd" or "direct"; see the module docstring
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS

    def setup(self) -> None:
        cfg = self.config
        convs = ConvFactory(self.conv_impl, self.winograd_min_channels)
        self.encoder = Encoder(cfg, self.dtype, convs)
        self.quant_conv = Conv(2 * cfg.latent_channels, 1, method="matmul", dtype=self.dtype, name="quant_conv")
        self.post_quant_conv = Conv(cfg.latent_channels, 1, method="matmul", dtype=self.dtype, name="post_quant_conv")
        self.decoder = Decoder(cfg, self.dtype, convs)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B,H,W,in_channels] in [-1,1] → (mean, logvar), each [B,H/f,W/f,latent_channels].

        ``logvar`` is clamped to [-30, 20] as diffusers' posterior does, so that
        ``exp(0.5*logvar)`` stays finite.
        """
        moments = self.quant_conv(self.encoder(images.astype(self.dtype))).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents [B,h,w,latent_channels] (unscaled) → images [B,h*f,w*f,out_channels]."""
        z = self.post_quant_conv(latents.astype(self.dtype))
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstructs images [B,H,W,C] from the posterior mean; used by ``init`` to build all params."""
        mean, _ = self.encode(images)
        return self.decode(mean)


# --------------------------------------------------------------------------------------
# Checkpoint conversion
# --------------------------------------------------------------------------------------

# Older diffusers releases named the attention projections differently.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_INDEXED = re.compile(r"^(.*)_(\d+)$")


def param_shapes(config: VAEConfig) -> dict:
    """Unboxed float32 parameter shapes (ShapeDtypeStructs) of ``AutoencoderKL(config)``."""
    side = config.downsample_factor * 2
    x = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
    shapes = jax.eval_shape(AutoencoderKL(config).init, jax.random.PRNGKey(0), x)
    return nn.unbox(shapes)["params"]


def _torch_key(path: tuple[str, ...]) -> str:
    parts = []
    for p in path[:-1]:
        m = _INDEXED.match(p)
        parts.extend([m.group(1), m.group(2)] if m else [p])
    parts.append("bias" if path[-1] == "bias" else "weight")
    return ".".join(parts)


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        h, w, i, o = shape
        return (o, i, h, w)
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(leaf: str, t: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
    if leaf != "kernel":
        return t
    if len(flax_shape) == 4:
        return t.transpose(2, 3, 1, 0)
    if t.ndim == 4:
        # Attention projections stored as 1x1 convs (LDM-style exports).
        t = t[:, :, 0, 0]
    return t.T


def vae_params_from_torch(
    tensors: Mapping[str, np.ndarray], config: VAEConfig = STANDARD_VAE, prefix: str = "vae.vae."
) -> dict:
    """Converts a diffusers AutoencoderKL state dict to ``AutoencoderKL(config)`` params.

    Args:
      tensors: torch-layout arrays (conv OIHW, linear [out, in]); only keys that
        start with ``prefix`` are read.
      config: the VAE architecture the checkpoint is expected to have.
      prefix: key prefix of the VAE inside ``tensors`` ("" for a bare VAE file).

    Returns:
      The ``params`` collection as nested dicts of float32 numpy arrays (no
      logical-partitioning boxes), i.e. ``{"params": result}`` is a valid
      variables dict for ``AutoencoderKL(config).apply``.

    Raises:
      ValueError: listing every missing, unexpected or mis-shaped tensor, with
        the torch key and the checkpoint and expected (torch-layout) shapes.
    """
    expected = {
        _torch_key(names): (names, tuple(sds.shape))
        for names, sds in traverse_util.flatten_dict(param_shapes(config)).items()
    }
    flat_params: dict[tuple[str, ...], np.ndarray] = {}
    problems: list[str] = []
    seen: set[str] = set()
    found_any = False
    for key in sorted(tensors):
        if not key.startswith(prefix):
            continue
        found_any = True
        name = _LEGACY_RE.sub(lambda m: m.group(1) + _LEGACY_ATTN[m.group(2)] + ".", key[len(prefix):])
        t = np.asarray(tensors[key])
        if name not in expected:
            problems.append(f"unexpected tensor {key!r} with shape {tuple(t.shape)}")
            continue
        if name in seen:
            problems.append(f"tensor {key!r} duplicates an already loaded {prefix + name!r}")
            continue
        seen.add(name)
        names, flax_shape = expected[name]
        want = _torch_shape(names[-1], flax_shape)
        squeezed_ok = (
            names[-1] == "kernel" and len(flax_shape) == 2 and t.shape == want + (1, 1)
        )
        if tuple(t.shape) != want and not squeezed_ok:
            problems.append(f"shape mismatch for {key!r}: checkpoint {tuple(t.shape)}, expected {want}")
            continue
        flat_params[names] = np.ascontiguousarray(_to_flax(names[-1], t, flax_shape), dtype=np.float32)

    for name in expected:
        if name not in seen:
            names, flax_shape = expected[name]
            problems.append(
                f"missing tensor {prefix + name!r} (expected shape {_torch_shape(names[-1], flax_shape)})"
            )

    if problems:
        head = "" if found_any else f"no tensors start with prefix {prefix!r}; "
        shown = problems[:25]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError(
            f"{head}VAE checkpoint does not match {config} "
            f"({len(problems)} problem(s)); if the checkpoint uses a different VAE architecture, "
            f"pass the matching vae_config:\n  " + "\n  ".join(shown) + more
        )
    return traverse_util.unflatten_dict(flat_params)
