"""Inception-v3 as pytorch-fid computes FID features, in Flax (NHWC), from local weights.

The topology is torchvision's Inception3 with pytorch-fid's FID modifications: BatchNorm eps
1e-3; the pool branch of the A, C and E blocks averages over a 3x3 window without counting the
padding; the last block (Mixed_7c) max-pools in that branch instead. Inputs are resized to
299x299 bilinearly as torch does (align_corners=False, no antialias), then run through the net.

Our API takes images in [-1, 1] (the project's range). pytorch-fid takes [0, 1], resizes, then
maps 2x - 1; the resize is linear with rows summing to one, so mapping first is the same
computation (up to float rounding, ~1e-7).

Weights: a safetensors file in pytorch-fid's key names (``blocks.B.I....``, the state dict of
``pytorch_fid.inception.InceptionV3``) plus the inner classifier ``fc.weight`` / ``fc.bias``.
``convert_pytorch_fid_checkpoint`` writes one from pytorch-fid's released
``pt_inception-2015-12-05-6726825d.pth`` (needs torch; reads with ``weights_only=True``).
"""
from __future__ import annotations

import argparse
import functools
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax.evaluate.resize import torch_resize
from flextok_jax.evaluate.torch_weights import WeightsError, params_from_torch, read_safetensors

BN_EPS = 1e-3
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 TF graph's classifier: 1000 ImageNet classes + 8 unused

# pytorch-fid's wrapper keeps torchvision's layers in four nn.Sequential blocks.
FID_BLOCKS = {
    "blocks.0.0": "Conv2d_1a_3x3",
    "blocks.0.1": "Conv2d_2a_3x3",
    "blocks.0.2": "Conv2d_2b_3x3",
    "blocks.1.0": "Conv2d_3b_1x1",
    "blocks.1.1": "Conv2d_4a_3x3",
    "blocks.2.0": "Mixed_5b",
    "blocks.2.1": "Mixed_5c",
    "blocks.2.2": "Mixed_5d",
    "blocks.2.3": "Mixed_6a",
    "blocks.2.4": "Mixed_6b",
    "blocks.2.5": "Mixed_6c",
    "blocks.2.6": "Mixed_6d",
    "blocks.2.7": "Mixed_6e",
    "blocks.3.0": "Mixed_7a",
    "blocks.3.1": "Mixed_7b",
    "blocks.3.2": "Mixed_7c",
}
_TORCHVISION_TO_FID = {v: k for k, v in FID_BLOCKS.items()}
_BN_LEAVES = {"scale": "bn.weight", "bias": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}

Pair = tuple[int, int]


class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU, NHWC.

    Params: ``kernel`` [kh, kw, Cin, C] and the BatchNorm ``scale``, ``bias``, ``mean``, ``var`` [C].
    """

    features: int
    kernel_size: Pair = (1, 1)
    strides: int = 1
    padding: Pair = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
            (kh, kw, x.shape[-1], self.features),
            jnp.float32,
        )

        def channel_param(name: str, init: Any) -> jax.Array:
            return self.param(name, nn.with_logical_partitioning(init, ("conv_out",)), (self.features,), jnp.float32)

        scale = channel_param("scale", nn.initializers.ones_init())
        bias = channel_param("bias", nn.initializers.zeros_init())
        mean = channel_param("mean", nn.initializers.zeros_init())
        var = channel_param("var", nn.initializers.ones_init())
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        gain = scale * jax.lax.rsqrt(var + BN_EPS)
        return nn.relu(y * gain + (bias - mean * gain))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    def conv(self, features: int, name: str, kernel_size: Pair = (1, 1), strides: int = 1, padding: Pair = (0, 0)):
        return BasicConv(features, kernel_size, strides, padding, name=name)


class InceptionA(_Block):
    """FIDInceptionA: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(no pad count)-1x1."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv(64, "branch1x1")(x)
        b5 = self.conv(64, "branch5x5_2", (5, 5), padding=(2, 2))(self.conv(48, "branch5x5_1")(x))
        b3 = self.conv(64, "branch3x3dbl_1")(x)
        b3 = self.conv(96, "branch3x3dbl_2", (3, 3), padding=(1, 1))(b3)
        b3 = self.conv(96, "branch3x3dbl_3", (3, 3), padding=(1, 1))(b3)
        bp = self.conv(self.pool_features, "branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """torchvision InceptionB (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv(384, "branch3x3", (3, 3), strides=2)(x)
        bd = self.conv(64, "branch3x3dbl_1")(x)
        bd = self.conv(96, "branch3x3dbl_2", (3, 3), padding=(1, 1))(bd)
        bd = self.conv(96, "branch3x3dbl_3", (3, 3), strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    """FIDInceptionC: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool(no pad count)-1x1."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of a 1x7 and a 7x1 conv
        b1 = self.conv(192, "branch1x1")(x)
        b7 = self.conv(c7, "branch7x7_1")(x)
        b7 = self.conv(c7, "branch7x7_2", row[0], padding=row[1])(b7)
        b7 = self.conv(192, "branch7x7_3", col[0], padding=col[1])(b7)
        bd = self.conv(c7, "branch7x7dbl_1")(x)
        for i, (features, (k, p)) in enumerate(zip((c7, c7, c7, 192), (col, row, col, row)), start=2):
            bd = self.conv(features, f"branch7x7dbl_{i}", k, padding=p)(bd)
        bp = self.conv(192, "branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """torchvision InceptionD (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv(320, "branch3x3_2", (3, 3), strides=2)(self.conv(192, "branch3x3_1")(x))
        b7 = self.conv(192, "branch7x7x3_1")(x)
        b7 = self.conv(192, "branch7x7x3_2", (1, 7), padding=(0, 3))(b7)
        b7 = self.conv(192, "branch7x7x3_3", (7, 1), padding=(3, 0))(b7)
        b7 = self.conv(192, "branch7x7x3_4", (3, 3), strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
    """FIDInceptionE_1 (``pool='avg'``, no pad count) / FIDInceptionE_2 (``pool='max'``):
    1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def split(name: str, h: jax.Array) -> jax.Array:
            a = self.conv(384, f"{name}a", (1, 3), padding=(0, 1))(h)
            b = self.conv(384, f"{name}b", (3, 1), padding=(1, 0))(h)
            return jnp.concatenate([a, b], axis=-1)

        b1 = self.conv(320, "branch1x1")(x)
        b3 = split("branch3x3_2", self.conv(384, "branch3x3_1")(x))
        bd = self.conv(384, "branch3x3dbl_2", (3, 3), padding=(1, 1))(self.conv(448, "branch3x3dbl_1")(x))
        bd = split("branch3x3dbl_3", bd)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
        bp = self.conv(192, "branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """[B, D] -> (x @ kernel, x @ kernel + bias), both [B, classes]; params ``kernel`` [D, classes], ``bias``."""

    classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_out", "classes")),
            (x.shape[-1], self.classes),
            jnp.float32,
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("classes",)), (self.classes,), jnp.float32
        )
        unbiased = x @ kernel
        return unbiased, unbiased + bias


def resize_for_inception(images: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> [B, 299, 299, 3], bilinear as pytorch-fid (identity at 299)."""
    return torch_resize(images, (INPUT_SIZE, INPUT_SIZE), "bilinear")


class InceptionV3FID(nn.Module):
    """pytorch-fid's FID Inception-v3. images [B, H, W, 3] in [-1, 1], any size ->

    ``pool3`` [B, 2048] (the FID features), ``logits`` [B, 1008] (= pool3 @ fc + bias, torchvision's
    classifier) and ``logits_unbiased`` [B, 1008] (= pool3 @ fc, no bias: what the Inception Score
    of improved-GAN and the ADM evaluator softmaxes). Block outputs are sown as
    ``intermediates/block0..block3`` (before the final average pool for block 3). ``precision``:
    the matmul/conv precision of the whole forward ("highest" = true float32 on accelerators too).
    """

    precision: str | None = "highest"

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        with jax.default_matmul_precision(self.precision):
            x = resize_for_inception(images.astype(jnp.float32))

            def conv(features: int, name: str, k: int, strides: int = 1, pad: int = 0) -> BasicConv:
                return BasicConv(features, (k, k), strides, (pad, pad), name=name)

            x = conv(32, "Conv2d_1a_3x3", 3, strides=2)(x)
            x = conv(32, "Conv2d_2a_3x3", 3)(x)
            x = _max_pool_3x3_s2(conv(64, "Conv2d_2b_3x3", 3, pad=1)(x))
            self.sow("intermediates", "block0", x)
            x = conv(80, "Conv2d_3b_1x1", 1)(x)
            x = _max_pool_3x3_s2(conv(192, "Conv2d_4a_3x3", 3)(x))
            self.sow("intermediates", "block1", x)
            for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
                x = InceptionA(pool_features, name=name)(x)
            x = InceptionB(name="Mixed_6a")(x)
            for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
                x = InceptionC(c7, name=name)(x)
            self.sow("intermediates", "block2", x)
            x = InceptionD(name="Mixed_7a")(x)
            x = InceptionE("avg", name="Mixed_7b")(x)
            x = InceptionE("max", name="Mixed_7c")(x)
            self.sow("intermediates", "block3", x)
            pool3 = jnp.mean(x, axis=(1, 2))
            unbiased, logits = Classifier(NUM_CLASSES, name="fc")(pool3)
        return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


def _torch_key(path: tuple[str, ...]) -> str:
    """Our parameter path -> its pytorch-fid state-dict key."""
    *modules, leaf = path
    if modules == ["fc"]:
        return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
    suffix = "conv.weight" if leaf == "kernel" else _BN_LEAVES[leaf]
    return ".".join([_TORCHVISION_TO_FID[modules[0]], *modules[1:], suffix])


@functools.lru_cache(maxsize=1)
def _abstract_params() -> Any:
    """Parameter shapes of ``InceptionV3FID`` (tracing the net costs seconds: done once)."""
    return jax.eval_shape(InceptionV3FID().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))["params"]


def inception_params_from_torch(tensors: Mapping[str, np.ndarray], source: str = "weights") -> dict:
    """pytorch-fid-named tensors (torch layouts) -> ``InceptionV3FID`` params (float32 numpy).

    Every conv, BatchNorm and fc tensor must be present with its shape; ``num_batches_tracked``
    buffers may be present (they are unused in evaluation). Raises ``WeightsError`` otherwise.
    """
    if "Conv2d_1a_3x3.conv.weight" in tensors:
        raise WeightsError(
            f"{source}: tensors use torchvision's names (Conv2d_1a_3x3...); rename them to pytorch-fid's "
            "with fid_keys_from_torchvision (or convert_pytorch_fid_checkpoint)"
        )
    ignored = [k for k in tensors if k.endswith(".num_batches_tracked")]
    return params_from_torch(tensors, _abstract_params(), _torch_key, source, ignored)


def load_inception(path: str | os.PathLike, precision: str | None = "highest") -> tuple[InceptionV3FID, dict]:
    """(model, params) from a safetensors file in pytorch-fid's key names; ``model.apply({"params":
    params}, images)`` with images [B, H, W, 3] in [-1, 1]."""
    path = os.fspath(path)
    return InceptionV3FID(precision), inception_params_from_torch(read_safetensors(path), source=path)


def fid_keys_from_torchvision(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision Inception3 names (as in pytorch-fid's released ``.pth``) -> pytorch-fid's
    wrapper names (``Mixed_5b.x`` -> ``blocks.2.0.x``); ``fc.*`` and ``num_batches_tracked`` keep
    their names. Any other key (e.g. ``AuxLogits.*``) is an error."""
    out = {}
    for key, value in state_dict.items():
        layer, _, rest = key.partition(".")
        if key in ("fc.weight", "fc.bias"):
            out[key] = value
        elif layer in _TORCHVISION_TO_FID:
            out[f"{_TORCHVISION_TO_FID[layer]}.{rest}"] = value
        else:
            raise WeightsError(f"tensor {key!r} (shape {tuple(np.shape(value))}) is not part of the FID Inception-v3")
    return out


def convert_pytorch_fid_checkpoint(pth_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` -> a safetensors file for ``load_inception``.

    Needs torch. The file is read with ``torch.load(weights_only=True)`` (tensors only; no code
    is run); the result is validated against the network before it is written.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("converting a .pth checkpoint needs torch (pip install torch); loading the result does not") from e
    from safetensors.numpy import save_file

    state = torch.load(os.fspath(pth_path), map_location="cpu", weights_only=True)
    tensors = {k: v.detach().cpu().numpy() for k, v in state.items()}
    tensors = fid_keys_from_torchvision(tensors)
    inception_params_from_torch(tensors, source=os.fspath(pth_path))
    tmp = os.fspath(out_path) + ".tmp"
    save_file({k: np.array(v, order="C") for k, v in tensors.items()}, tmp, metadata={"source": os.path.basename(os.fspath(pth_path))})
    os.replace(tmp, out_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert pytorch-fid's Inception .pth to safetensors (needs torch).")
    parser.add_argument("pth", help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("out", help="output .safetensors")
    args = parser.parse_args(argv)
    convert_pytorch_fid_checkpoint(args.pth, args.out)


if __name__ == "__main__":
    main()
