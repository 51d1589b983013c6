"""Public API behaviour: input checks, sharded execution, bfloat16, our parameter files,
checkpoint headers and options this port rejects."""
import ast
import re
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import flextok_jax
from flextok_jax import parallel
from flextok_jax.checkpoint_official import MAX_HEADER_BYTES, CheckpointError, read_safetensors_metadata
from flextok_jax.params_io import load_model, load_params, save_params

from helpers import fixture_vae_config, max_err, nhwc


@pytest.fixture(scope="module")
def images(parity_io):
    return nhwc(parity_io["images"])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((64, 64, 3), np.float32), r"\[B, H, W, 3\].*\(64, 64, 3\)"),
        (np.zeros((1, 64, 64, 4), np.float32), r"\[B, H, W, 3\].*\(1, 64, 64, 4\)"),
        (np.zeros((1, 60, 64, 3), np.float32), r"60x64 must be a multiple of 16"),
        (np.zeros((1, 128, 128, 3), np.float32), r"at most 64x64"),
        (np.full((1, 64, 64, 3), 255.0, np.float32), r"\[-1, 1\], got \[255, 255\]"),
    ],
)
def test_tokenize_rejects_bad_images(tiny, bad, match):
    model, params = tiny
    with pytest.raises(ValueError, match=match):
        model.tokenize(params, bad)


def test_tokenize_rejects_non_finite_images(tiny):
    """NaN compares false, so a range check alone lets it through: non-finite values are counted."""
    model, params = tiny
    images = np.zeros((2, 64, 64, 3), np.float32)
    images[0, 1, 2, 0] = np.nan
    images[1, 5, 5, 1] = np.inf
    images[1, 6, 5, 2] = -np.inf
    with pytest.raises(ValueError, match=r"3 non-finite values \(NaN or inf\)"):
        model.tokenize(params, images)
    with pytest.raises(ValueError, match="1 non-finite"):
        model.tokenize(params, jnp.asarray(images[:1]))  # a device array too


def test_image_checks_read_only_local_shards(tiny):
    """A batch-sharded array is checked where it lives (on its 8 devices), and a bad value in
    any shard is found."""
    model, params = tiny
    mesh = parallel.make_mesh((8, 1, 1))
    images = np.zeros((8, 64, 64, 3), np.float32)
    images[7, 0, 0, 0] = 2.0  # in the last device's shard
    sharded = jax.device_put(images, parallel.batch_sharding(mesh))
    assert len(sharded.addressable_shards) == 8
    with pytest.raises(ValueError, match=r"\[-1, 1\], got \[0, 2\]"):
        model.tokenize(params, sharded)


def test_tokenize_rejects_uint8(tiny):
    model, params = tiny
    with pytest.raises(TypeError, match="x / 127.5 - 1"):
        model.tokenize(params, np.zeros((1, 64, 64, 3), np.uint8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tokens=np.array([[64000]])), r"\[0, 64000\).*64000"),
        (dict(tokens=np.array([[-1, 3]])), r"\[0, 64000\)"),
        (dict(tokens=np.zeros((1, 17), np.int32)), r"17 per image; expected 1..16"),
        (dict(tokens=np.zeros((16,), np.int32)), r"int array \[B, n\]"),
        (dict(tokens=np.zeros((2, 16), np.int32), keep_k=0), r"keep_k must lie in \[1, 16\]"),
        (dict(tokens=np.zeros((2, 16), np.int32), keep_k=np.array([3, 17])), r"\[1, 16\].*\[3, 17\]"),
        (dict(tokens=np.zeros((2, 16), np.int32), keep_k=np.array([3, 4, 5])), r"shape \[2\]"),
        (dict(tokens=np.zeros((2, 4), np.int32), keep_k=8), r"exceeds the 4 tokens"),
        (dict(tokens=np.zeros((1, 16), np.int32), guidance="pag"), r"'cfg' or 'apg'"),
        (dict(tokens=np.zeros((1, 16), np.int32), noise=np.zeros((1, 16, 8, 8))), r"\(1, 8, 8, 16\)"),
    ],
)
def test_detokenize_rejects_bad_arguments(tiny, kwargs, match):
    model, params = tiny
    with pytest.raises(ValueError, match=match):
        model.detokenize(params, num_steps=1, **kwargs)


def test_tokenize_detokenize_shapes(tiny, images):
    model, params = tiny
    tokens = model.tokenize(params, images)
    chex.assert_shape(tokens, (2, 16))
    chex.assert_type(tokens, jnp.int32)
    out = model.detokenize(params, tokens, keep_k=np.array([1, 16]), num_steps=2, rng=jax.random.key(1))
    chex.assert_equal_shape([out, images])
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    latents, codes = model.encode(params, images, num_tokens=4)
    chex.assert_shape([latents, codes], [(2, 8, 8, 16), (2, 4, model.config.code_dim)])


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_outputs_equal_single_device(tiny, parity_io, images, mesh_shape):
    """Batch over data axes, parameters sharded by the logical rules: same results as one device."""
    model, params = tiny
    mesh = parallel.make_mesh(mesh_shape)
    sharded = parallel.shard_params(params, model.logical_specs(), mesh)
    batch = np.concatenate([images] * 4)  # 8 images so every data shard holds some
    tokens_ref = model.tokenize(params, batch)
    tokens = model.tokenize(sharded, jax.device_put(batch, parallel.batch_sharding(mesh)))
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(tokens_ref))

    kw = dict(keep_k=np.tile(parity_io["detok_keep_k"], 4), num_steps=2, guidance_scale=3.0, guidance="apg",
              noise=np.concatenate([nhwc(parity_io["detok_noise"])] * 4))
    ref = model.sample_latents(params, np.asarray(tokens_ref), **kw)
    got = model.sample_latents(sharded, np.asarray(tokens_ref), **kw)
    assert max_err(got, ref) <= 1e-5
    # Some parameter really is split across devices.
    kernel = sharded["decoder"]["blocks_0"]["attn"]["wq"]["kernel"]  # [64, 64]: embed x heads
    assert len({str(s.index) for s in kernel.addressable_shards}) == mesh_shape[1] * mesh_shape[2]
    # The SwiGLU width 170 does not divide by 4: that dimension falls back to replication.
    fc1 = sharded["decoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec[1] == ("tensor" if 170 % mesh_shape[2] == 0 else None)


# ---------------------------------------------------------------- bfloat16
# Measured on the parity checkpoint (2 images, values of order 1): enc_pre_fsq 3.7e-2, 4-step CFG
# latents 5.3e-2, images 6.7e-2 max abs against float32. Bounds are about twice that.
BF16_BOUNDS = {"enc_pre_fsq": 8e-2, "latents": 1.2e-1, "images": 1.5e-1}


def test_bfloat16_inference_error(parity_dir, parity_io, tiny, images):
    model32, params = tiny
    model16, params16 = flextok_jax.load_official_checkpoint(
        parity_dir / "flextok_tiny.safetensors", vae_config=fixture_vae_config(parity_io), dtype=jnp.bfloat16
    )
    latents = model32.encode_latents(params, images)
    z32 = model32.encode_registers(params, latents)
    z16 = model16.encode_registers(params16, latents)
    err_z = max_err(z16, z32)
    kw = dict(keep_k=parity_io["detok_keep_k"], num_steps=4, guidance_scale=3.0, noise=nhwc(parity_io["detok_noise"]))
    lat32 = model32.sample_latents(params, parity_io["token_ids"], **kw)
    lat16 = model16.sample_latents(params16, parity_io["token_ids"], **kw)
    img32 = model32.detokenize(params, parity_io["token_ids"], **kw)
    img16 = model16.detokenize(params16, parity_io["token_ids"], **kw)
    errs = {"enc_pre_fsq": err_z, "latents": max_err(lat16, lat32), "images": max_err(img16, img32)}
    print("bfloat16 vs float32 max abs error:", errs)
    for key, bound in BF16_BOUNDS.items():
        assert errs[key] <= bound, (key, errs[key])
    assert img16.dtype == jnp.float32
    # bf16 must really compute in bf16, or the test above proves nothing.
    assert err_z > 1e-4


# ---------------------------------------------------------------- our files
def test_save_load_params_roundtrip(tmp_path, tiny, images):
    model, params = tiny
    path = tmp_path / "tiny.safetensors"
    save_params(path, params, model.config)
    loaded, config = load_params(path)
    assert config == model.config
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    model2, params2 = load_model(path)
    np.testing.assert_array_equal(np.asarray(model2.tokenize(params2, images)), np.asarray(model.tokenize(params, images)))


def test_load_params_rejects_foreign_and_mismatched_files(tmp_path, parity_dir, tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="load_official_checkpoint"):
        load_params(parity_dir / "flextok_tiny.safetensors")
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["encoder"]["registers"] = np.zeros((3, 64), np.float32)
    path = tmp_path / "bad.safetensors"
    save_params(path, bad, model.config)
    with pytest.raises(ValueError, match=re.escape("'encoder/registers' has shape (3, 64), expected (16, 64)")):
        load_model(path)


# ---------------------------------------------------------------- safetensors headers
def test_metadata_reader_rejects_huge_and_broken_headers(tmp_path, parity_dir):
    assert read_safetensors_metadata(parity_dir / "flextok_tiny.safetensors")["_target_"] == (
        "flextok.flextok_wrapper.FlexTok"
    )
    huge = tmp_path / "huge.safetensors"
    # Claims a header one byte over the limit; the file itself is tiny, so it is the length check
    # (not a failed read) that must reject it.
    huge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(CheckpointError, match=rf"huge\.safetensors: safetensors header of {MAX_HEADER_BYTES + 1} bytes"):
        read_safetensors_metadata(huge)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 9) + b"{not json")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: unreadable safetensors header"):
        read_safetensors_metadata(broken)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"short\.safetensors: too short"):
        read_safetensors_metadata(short)


# ---------------------------------------------------------------- vae.sample_posterior
def _with_vae_field(src, dst, value):
    """Copy of the official checkpoint ``src`` with vae.sample_posterior set (None: removed)."""
    meta = read_safetensors_metadata(src)
    vae = ast.literal_eval(meta["vae"])
    vae.pop("sample_posterior")
    if value is not None:
        vae["sample_posterior"] = value
    save_file(load_file(src), dst, metadata={**meta, "vae": str(vae)})
    return dst


@pytest.mark.parametrize("value", [True, None])
def test_checkpoint_asking_for_posterior_samples_is_honoured(tmp_path, parity_dir, parity_io, value, tiny):
    """vae.sample_posterior True (or absent: the official default) loads; encode_latents with an
    rng then samples mean + std * noise, without one it is the posterior mean (tokenize)."""
    src = parity_dir / "flextok_tiny.safetensors"
    assert ast.literal_eval(read_safetensors_metadata(src)["vae"])["sample_posterior"] is False
    path = _with_vae_field(src, tmp_path / "posterior.safetensors", value)
    model, params = flextok_jax.load_official_checkpoint(path, vae_config=fixture_vae_config(parity_io))
    assert model.config.vae_sample_posterior and not tiny[0].config.vae_sample_posterior
    images = jnp.asarray(nhwc(parity_io["images"]))
    mean = model.encode_latents(params, images)
    np.testing.assert_allclose(np.asarray(mean), nhwc(parity_io["vae_latents"]), atol=1e-4)
    m, logvar = model.vae.apply({"params": params["vae"]}, images, method=type(model.vae).encode)
    rng = jax.random.key(3)
    sampled = model.encode_latents(params, images, rng)
    want = (m + jnp.exp(0.5 * logvar) * jax.random.normal(rng, m.shape)) * model.config.vae_scaling_factor
    assert max_err(sampled, want) <= 1e-5 and max_err(sampled, mean) > 1e-3
    # The fixture's own model (sample_posterior False) ignores the rng.
    assert max_err(tiny[0].encode_latents(tiny[1], images, rng), tiny[0].encode_latents(tiny[1], images)) == 0
