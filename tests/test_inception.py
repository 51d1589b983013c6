"""FID Inception-v3 against pytorch-fid's outputs (tests/fixtures/inception_fid_ref.npz).

The fixture's weights are not stored: FEATURE_NETWORKS.md gives the seeded numpy rule, which we
replay (and check against its sha256 digest) into a safetensors file in pytorch-fid's key names.
Tolerances: the fixture suggests atol 1e-4; we ask for |d| <= 1e-5 + 1e-4 |ref| (observed:
pool3 7e-7, logits 1e-6, float32 against torch float32).
"""
import hashlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from flextok_jax.evaluate.inception import (
    FID_BLOCKS,
    fid_keys_from_torchvision,
    inception_params_from_torch,
    load_inception,
    resize_for_inception,
)
from flextok_jax.evaluate.resize import torch_resize
from flextok_jax.evaluate.torch_weights import WeightsError

DIGEST = "aea6100a4149ff8ced2ea5c6e97d7e4af5e723ec3ed7574b091c3e90bba68739"


def _seeded_weights(spec: list[dict]) -> dict[str, np.ndarray]:
    """The fixture's weight rule (FEATURE_NETWORKS.md section 2), drawn in key order."""
    rng = np.random.default_rng(0)
    out = {}
    for entry in spec:
        shape, rule = tuple(entry["shape"]), entry["rule"]
        if rule == "he_normal":
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape).astype(np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        elif rule == "zeros":
            value = np.zeros(shape, np.float32)
        elif rule == "bn_weight":
            value = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif rule in ("bn_bias", "bn_running_mean"):
            value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif rule == "bn_running_var":
            value = (1.0 + 0.1 * np.abs(rng.standard_normal(shape))).astype(np.float32)
        elif rule == "untouched":
            value = np.zeros(shape, np.int64)
        else:
            raise AssertionError(f"unknown rule {rule}")
        out[entry["key"]] = value
    return out


@pytest.fixture(scope="module")
def spec(parity_dir):
    return json.loads((parity_dir / "inception_keys.json").read_text())["tensors"]


@pytest.fixture(scope="module")
def ref(parity_dir):
    with np.load(parity_dir / "inception_fid_ref.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def tensors(spec):
    out = _seeded_weights(spec)
    digest = hashlib.sha256()
    for value in out.values():
        if value.dtype == np.float32:
            digest.update(np.ascontiguousarray(value, "<f4").tobytes())
    assert digest.hexdigest() == DIGEST
    return out


@pytest.fixture(scope="module")
def weights_file(tensors, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "fid_random.safetensors"
    save_file(tensors, str(path))
    return path


def _nhwc(x):
    return np.ascontiguousarray(np.moveaxis(x, -3, -1))


def _bilinear_gather(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent float64 torch-bilinear (align_corners=False): per-pixel four-neighbour blend."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]

    def coords(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, src - i0

    y0, y1, fy = coords(h, out_h)
    x0, x1, fx = coords(w, out_w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def test_resize_matches_torch_and_float64(ref):
    img = _nhwc(ref["images_256"][:1])
    ours = np.asarray(jax.jit(resize_for_inception)(jnp.asarray(img)))[0]
    np.testing.assert_allclose(ours, _nhwc(ref["resized_299_img0"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, _bilinear_gather(img[0], 299, 299), rtol=0, atol=1e-6)
    # Shrinking (where jax.image.resize would antialias): 299 -> 100 x 123 still torch's blend.
    big = _nhwc(ref["images_299"][:1])
    small = np.asarray(torch_resize(jnp.asarray(big), (100, 123), "bilinear"))[0]
    np.testing.assert_allclose(small, _bilinear_gather(big[0], 100, 123), rtol=0, atol=1e-6)
    antialiased = np.asarray(jax.image.resize(jnp.asarray(big), (1, 100, 123, 3), "bilinear"))[0]
    assert np.abs(antialiased - small).max() > 1e-3  # 1000x the tolerance: the images tell the two apart
    # 299 inputs pass unchanged (torch's identity resize).
    np.testing.assert_array_equal(np.asarray(resize_for_inception(jnp.asarray(big))), big)


def test_forward_matches_pytorch_fid(weights_file, tensors, ref):
    model, params = load_inception(weights_file)
    # Inputs in [0, 1] -> our range [-1, 1]; resize separately so that the net compiles once.
    x256 = resize_for_inception(jnp.asarray(_nhwc(ref["images_256"])) * 2 - 1)
    x = jnp.concatenate([x256, jnp.asarray(_nhwc(ref["images_299"])) * 2 - 1])
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))
    out, state = apply(params, x)
    pool3 = np.concatenate([ref["pool3_256"], ref["pool3_299"]])
    logits = np.concatenate([ref["logits_256"], ref["logits_299"]])
    np.testing.assert_allclose(np.asarray(out["pool3"]), pool3, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["logits"]), logits, rtol=1e-4, atol=1e-5)
    unbiased = np.asarray(out["pool3"], np.float64) @ tensors["fc.weight"].T.astype(np.float64)
    np.testing.assert_allclose(np.asarray(out["logits_unbiased"]), unbiased, rtol=0, atol=1e-5)
    blocks = state["intermediates"]
    for b in range(4):
        feats = np.asarray(blocks[f"block{b}"][0])
        np.testing.assert_allclose(feats.mean(axis=(1, 2)), ref[f"debug_block{b}_spatial_mean"], rtol=0, atol=1e-5)
        if b < 3:
            np.testing.assert_allclose(feats[0, :8, :8], _nhwc(ref[f"debug_block{b}_img0_crop8"]), rtol=0, atol=1e-4)


def test_pytorch_fid_names_match_torchvision_names(spec):
    by_torchvision = {e["torchvision_key"]: np.zeros(e["shape"]) for e in spec}
    renamed = fid_keys_from_torchvision(by_torchvision)
    assert sorted(renamed) == sorted(e["key"] for e in spec)
    assert set(FID_BLOCKS.values()) == {e["torchvision_key"].split(".")[0] for e in spec} - {"fc"}
    with pytest.raises(WeightsError, match="AuxLogits.fc.weight"):
        fid_keys_from_torchvision({"AuxLogits.fc.weight": np.zeros((1000, 768))})


def test_loader_names_key_and_shapes(tensors, tmp_path):
    good = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    inception_params_from_torch(good)  # the buffers are optional

    bad = dict(good, **{"blocks.2.3.branch3x3.conv.weight": np.zeros((384, 288, 3, 2), np.float32)})
    with pytest.raises(WeightsError, match=r"'blocks.2.3.branch3x3.conv.weight' has shape \(384, 288, 3, 2\), expected \(384, 288, 3, 3\)"):
        inception_params_from_torch(bad)
    missing = {k: v for k, v in good.items() if k != "fc.bias"}
    with pytest.raises(WeightsError, match=r"missing tensor 'fc.bias' \(expected shape \(1008,\)\)"):
        inception_params_from_torch(missing)
    extra = dict(good, **{"blocks.9.conv.weight": np.zeros((1, 1), np.float32)})
    with pytest.raises(WeightsError, match=r"unexpected tensor 'blocks.9.conv.weight' with shape \(1, 1\)"):
        inception_params_from_torch(extra)
    torchvision_named = {"Conv2d_1a_3x3.conv.weight": tensors["blocks.0.0.conv.weight"]}
    with pytest.raises(WeightsError, match="torchvision's names"):
        inception_params_from_torch(torchvision_named)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_inception(tmp_path / "absent.safetensors")
