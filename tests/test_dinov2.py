"""DINOv2 ViT against the official forward_features (tests/fixtures/dinov2_tiny_ref.npz).

Tolerances: the fixture suggests atol 1e-4; we ask for 2e-5 on the network outputs (observed
<= 5.3e-6) and 1e-5 on the preprocessing and the position grid (observed 4.4e-6, 2.7e-6; torch
itself differs from float64 by 4.5e-6 there). Register tokens are not in the fixture: they are
checked against an independent float64 numpy forward.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_config
from safetensors.numpy import load_file, save_file

from flextok_jax.evaluate.dinov2 import (
    cls_features,
    interpolate_pos_embed,
    load_dinov2,
    patch_features,
    preprocess,
)
from flextok_jax.evaluate.fid import StatsAccumulator, feature_statistics, stats_distance
from flextok_jax.evaluate.resize import resize_matrix
from flextok_jax.evaluate.torch_weights import WeightsError
from flextok_jax.train import TrainSetup, repa


@pytest.fixture(scope="module")
def weights(parity_dir):
    return parity_dir / "dinov2_tiny.safetensors"


@pytest.fixture(scope="module")
def ref(parity_dir):
    return dict(np.load(parity_dir / "dinov2_tiny_ref.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def model_params(weights):
    return load_dinov2(weights)


def _nhwc(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _our_range(u8):
    """uint8 NCHW -> our [-1, 1] NHWC (REPA divides by 255 first)."""
    return jnp.asarray(_nhwc(np.float32(u8) / np.float32(255))) * 2 - 1


def test_forward_features_match_official(model_params, ref):
    model, params = model_params
    apply = jax.jit(lambda x: model.apply({"params": params}, x))
    for size in (224, 448):
        out = apply(jnp.asarray(_nhwc(ref[f"preprocessed_{size}"])))
        np.testing.assert_allclose(out["x_norm_patchtokens"], ref[f"x_norm_patchtokens_{size}"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(out["x_norm_clstoken"], ref[f"x_norm_clstoken_{size}"], rtol=0, atol=2e-5)
        if size == 224:
            np.testing.assert_allclose(out["x_prenorm"], ref["x_prenorm_224"], rtol=0, atol=2e-5)


def test_repa_preprocessing_matches_official(ref):
    for res, size in ((256, 224), (512, 448)):
        ours = np.asarray(jax.jit(preprocess, static_argnums=1)(_our_range(ref[f"images_{res}_uint8"]), size))
        np.testing.assert_allclose(ours, _nhwc(ref[f"preprocessed_{size}"]), rtol=0, atol=1e-5)
    # The fixture tells torch's bicubic (a = -0.75, no antialias) from jax.image.resize's.
    x = jnp.asarray(_nhwc(ref["images_256"]))
    jax_bicubic = np.asarray(jax.image.resize(x, (2, 224, 224, 3), "bicubic"))
    ours01 = np.asarray(preprocess(x * 2 - 1, 224)) * np.float32([0.229, 0.224, 0.225]) + np.float32([0.485, 0.456, 0.406])
    assert np.abs(jax_bicubic - ours01).max() > 1e-3


def test_pos_embed_interpolation_uses_scale_factor(model_params, ref):
    _, params = model_params
    pos = jnp.asarray(params["pos_embed"])
    got = np.asarray(interpolate_pos_embed(pos, (32, 32), 0.1))
    np.testing.assert_allclose(got, ref["pos_embed_interpolated_448"], rtol=0, atol=1e-5)
    by_size = np.asarray(interpolate_pos_embed(pos, (32, 32), 0.0))  # size=(32, 32) instead
    assert np.abs(by_size - ref["pos_embed_interpolated_448"]).max() > 0.05
    np.testing.assert_array_equal(np.asarray(interpolate_pos_embed(pos, (16, 16), 0.1)), params["pos_embed"])


def test_repa_teacher_and_fd_dinov2(weights, ref):
    teacher = repa.get_teacher("dinov2", None, str(weights))
    assert teacher.dim == 64
    images = _our_range(ref["images_256_uint8"])
    feats = np.asarray(jax.jit(teacher.features)(teacher.weights(), images))
    np.testing.assert_allclose(feats, ref["x_norm_patchtokens_224"], rtol=0, atol=1e-4)
    model, params = load_dinov2(weights)
    cls = np.asarray(jax.jit(lambda x: cls_features(model, params, x))(images))
    np.testing.assert_allclose(cls, ref["x_norm_clstoken_224"], rtol=0, atol=1e-4)
    # FD-DINOv2 with the shared statistics code, on more images than feature dimensions (full-rank
    # covariances): float32 accumulation matches float64 numpy statistics; a set against itself is 0.
    rng = np.random.default_rng(1)
    set_a = jnp.asarray(rng.uniform(-1, 1, (96, 32, 32, 3)), jnp.float32)
    set_b = jnp.flip(set_a, 2) * 0.5
    feats = np.asarray(jax.jit(lambda x: cls_features(model, params, x))(jnp.concatenate([set_a, set_b])))
    stats = []
    for f in (feats[:96], feats[96:]):
        acc = StatsAccumulator(64)
        acc.update(jnp.asarray(f))
        stats.append(acc.result())
    fd = stats_distance(stats[0], stats[1])
    assert fd > 1e-2
    assert abs(fd - stats_distance(feature_statistics(feats[:96]), feature_statistics(feats[96:]))) <= 1e-6 * fd
    # The bound (1e-6); measured up to 1.4e-9 (it varies with BLAS threading).
    assert abs(stats_distance(stats[0], stats[0])) <= 1e-6
    with pytest.raises(ValueError, match="square images"):
        patch_features(model, params, jnp.zeros((1, 256, 128, 3)))


# --- independent float64 forward (numpy), used for register tokens ----------------------------


def _np_forward(t: dict, x: np.ndarray, heads: int, registers: int) -> np.ndarray:
    """x [B, H, W, 3] float64 -> final-norm tokens [B, 1 + R + N, D]; official dinov2 order."""
    def ln(v, w, b):
        mu = v.mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * w + b

    w = t["patch_embed.proj.weight"].astype(np.float64)  # [D, 3, p, p]
    d, _, p, _ = w.shape
    b_, hh, ww, _ = x.shape
    gh, gw = hh // p, ww // p
    patches = x[:, : gh * p, : gw * p].reshape(b_, gh, p, gw, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b_, gh * gw, -1)
    tok = patches @ w.reshape(d, -1).T + t["patch_embed.proj.bias"]
    pos = t["pos_embed"][0].astype(np.float64)
    m = math.isqrt(pos.shape[0] - 1)
    grid = pos[1:].reshape(m, m, d)
    if (gh, gw) != (m, m):
        wy = resize_matrix(m, gh, "bicubic", (gh + 0.1) / m)
        wx = resize_matrix(m, gw, "bicubic", (gw + 0.1) / m)
        grid = np.einsum("ah,bw,hwd->abd", wy, wx, grid)
    tok = np.concatenate([np.broadcast_to(t["cls_token"][0], (b_, 1, d)), tok], 1)
    tok = tok + np.concatenate([pos[:1], grid.reshape(-1, d)])[None]
    if registers:
        tok = np.concatenate([tok[:, :1], np.broadcast_to(t["register_tokens"][0], (b_, registers, d)), tok[:, 1:]], 1)
    n, hd = tok.shape[1], d // heads
    i = 0
    while f"blocks.{i}.norm1.weight" in t:
        g = lambda k: t[f"blocks.{i}.{k}"].astype(np.float64)  # noqa: E731
        h = ln(tok, g("norm1.weight"), g("norm1.bias")) @ g("attn.qkv.weight").T + g("attn.qkv.bias")
        q, k, v = h.reshape(b_, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b_, n, d)
        tok = tok + g("ls1.gamma") * (o @ g("attn.proj.weight").T + g("attn.proj.bias"))
        h = ln(tok, g("norm2.weight"), g("norm2.bias")) @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
        tok = tok + g("ls2.gamma") * (h @ g("mlp.fc2.weight").T + g("mlp.fc2.bias"))
        i += 1
    return ln(tok, t["norm.weight"], t["norm.bias"])


def test_register_tokens_against_float64_numpy(weights, ref, tmp_path):
    tensors = load_file(str(weights))
    np.testing.assert_allclose(  # first: the numpy forward reproduces the fixture
        _np_forward(tensors, _nhwc(ref["preprocessed_224"]).astype(np.float64), 2, 0)[:, 1:],
        ref["x_norm_patchtokens_224"], rtol=0, atol=2e-5,
    )
    rng = np.random.default_rng(0)
    tensors["register_tokens"] = rng.normal(0, 0.5, (1, 4, 64)).astype(np.float32)
    path = tmp_path / "dinov2_reg4.safetensors"
    save_file(tensors, str(path), metadata={"config": '{"num_heads": 2}'})
    model, params = load_dinov2(path)
    assert model.config.num_register_tokens == 4
    x = rng.standard_normal((1, 196, 168, 3)).astype(np.float32)  # 14 x 12 patches: non-square grid
    out = model.apply({"params": params}, jnp.asarray(x))
    want = _np_forward(tensors, x.astype(np.float64), 2, 4)
    assert out["x_norm_regtokens"].shape == (1, 4, 64) and out["x_norm_patchtokens"].shape == (1, 168, 64)
    got = np.concatenate([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_loader_errors(weights, tmp_path):
    tensors = load_file(str(weights))
    meta = {"config": '{"num_heads": 2}'}
    bad = dict(tensors, **{"blocks.1.attn.proj.weight": np.zeros((64, 32), np.float32)})
    save_file(bad, str(tmp_path / "a.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match=r"'blocks.1.attn.proj.weight' has shape \(64, 32\), expected \(64, 64\)"):
        load_dinov2(tmp_path / "a.safetensors")
    extra = dict(tensors, **{"head.weight": np.zeros((3, 64), np.float32)})
    save_file(extra, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match=r"unexpected tensor 'head.weight' with shape \(3, 64\)"):
        load_dinov2(tmp_path / "b.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "blocks.0.ls2.gamma"}
    save_file(missing, str(tmp_path / "c.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match=r"missing tensor 'blocks.0.ls2.gamma' \(expected shape \(64,\)\)"):
        load_dinov2(tmp_path / "c.safetensors")
    swiglu = {k.replace("mlp.fc1", "mlp.w12"): v for k, v in tensors.items()}
    save_file(swiglu, str(tmp_path / "d.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="SwiGLU"):
        load_dinov2(tmp_path / "d.safetensors")


def _constants_shaped_like(hlo: str, leaves: list[np.ndarray]) -> list[str]:
    """Constants of the lowered program with the shape of one of ``leaves`` (weights baked in).
    Leaves under 1024 elements are skipped: small tables (norm scales, biases) can collide with
    legitimate constants."""
    shapes = {"x".join(map(str, leaf.shape)) for leaf in leaves if leaf.size >= 1024}
    found = []
    for line in hlo.splitlines():
        if "constant" in line:
            found += [t for t in re.findall(r"tensor<((?:\d+x)+)f32>", line) if t[:-1] in shapes]
    return found


def test_repa_training_with_the_dinov2_teacher(weights, model_params):
    """The tiny tokenizer trains with the DINOv2 teacher; its weights are frozen, sharded state
    (equal to the file, unchanged by steps), not constants of the compiled step."""
    config = small_config(repa_teacher="dinov2", repa_teacher_weights=str(weights), repa_weight=0.5)
    config.train.global_batch_size = 8
    config.mesh.shape = (2, 2, 2)
    setup = TrainSetup.from_config(config)
    host = {"image": np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)}
    _, file_params = model_params

    state = setup.init_state()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.frozen["repa_teacher"], file_params)
    hlo = setup.step.lower(state, setup.global_batch(host)).as_text()
    teacher_leaves = jax.tree.leaves(file_params)
    assert "x".join(map(str, teacher_leaves[0].shape)) in hlo  # the search can find them ...
    assert not _constants_shaped_like(hlo, teacher_leaves)      # ... but none is a constant
    before = jax.tree.map(np.asarray, state.frozen["repa_teacher"])
    state, metrics = setup.run_step(state, host)
    assert np.isfinite(float(metrics["loss"])) and -1.0 <= float(metrics["loss_repa"]) <= 1.0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.frozen["repa_teacher"], before)

    # The step reads the teacher from the state: other weights give another REPA loss.
    fresh = setup.init_state()
    _, want = setup.run_step(fresh, host)
    fresh = setup.init_state()
    fresh = fresh.replace(frozen={**fresh.frozen, "repa_teacher": jax.tree.map(lambda w: w * 0.5, fresh.frozen["repa_teacher"])})
    _, got = setup.run_step(fresh, host)
    assert abs(float(got["loss_repa"]) - float(want["loss_repa"])) > 1e-4, (got["loss_repa"], want["loss_repa"])
