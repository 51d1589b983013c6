"""Parity and loader tests for the AutoencoderKL port (flextok_jax.model.vae).

Reference outputs come from diffusers' AutoencoderKL run in float32 on the
tiny fixture VAE (see shared/parity/README.md, sections 1 and 3).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from flextok_jax.model.vae import (
    STANDARD_VAE,
    AutoencoderKL,
    VAEConfig,
    param_shapes,
    vae_params_from_torch,
)

PARITY_TOL = 1e-4
# bf16 compute vs f32 compute on the fixture, both jitted on CPU. Measured max
# abs: encode mean 5.1e-2 (|mean| up to 2.2), decode 8.0e-2 (|image| up to
# 3.0), i.e. a few bf16 ulps after ~20 layers; the bounds are about twice that.
BF16_ENCODE_TOL = 1e-1
BF16_DECODE_TOL = 1.6e-1


@pytest.fixture(scope="module")
def tensors(parity_dir) -> dict[str, np.ndarray]:
    return load_file(parity_dir / "flextok_tiny.safetensors")


@pytest.fixture(scope="module")
def tiny_cfg(parity_io) -> VAEConfig:
    return VAEConfig(
        latent_channels=16,
        block_out_channels=tuple(int(c) for c in parity_io["vae_cfg_block_out_channels"]),
        layers_per_block=int(parity_io["vae_cfg_layers_per_block"]),
        norm_num_groups=int(parity_io["vae_cfg_norm_num_groups"]),
        mid_block_add_attention=bool(parity_io["vae_cfg_mid_block_add_attention"]),
    )


@pytest.fixture(scope="module")
def variables(tensors, tiny_cfg) -> dict:
    return {"params": vae_params_from_torch(tensors, tiny_cfg)}


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _run(cfg: VAEConfig, dtype, variables: dict, images: np.ndarray, latents: np.ndarray):
    model = AutoencoderKL(cfg, dtype=dtype)
    enc = jax.jit(lambda v, x: model.apply(v, x, method=AutoencoderKL.encode))
    dec = jax.jit(lambda v, z: model.apply(v, z, method=AutoencoderKL.decode))
    mean, logvar = enc(variables, images)
    return np.asarray(mean), np.asarray(logvar), np.asarray(dec(variables, latents))


@pytest.fixture(scope="module")
def f32_outputs(parity_io, tiny_cfg, variables):
    s = float(parity_io["vae_scaling_factor"])
    return _run(
        tiny_cfg, jnp.float32, variables, _nhwc(parity_io["images"]), _nhwc(parity_io["vae_latents"]) / s
    )


def test_param_tree_matches_init(tiny_cfg, variables):
    shapes = param_shapes(tiny_cfg)
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), variables["params"])
    want = jax.tree_util.tree_map(lambda a: (a.shape, np.dtype(a.dtype)), shapes)
    assert got == want


def test_logical_axis_annotations(tiny_cfg):
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    boxed = jax.eval_shape(AutoencoderKL(tiny_cfg).init, jax.random.PRNGKey(0), x)["params"]
    names = jax.tree_util.tree_map(
        lambda b: b.names, boxed, is_leaf=lambda b: hasattr(b, "names")
    )
    enc = names["encoder"]
    assert enc["conv_in"]["kernel"] == (None, None, "conv_in", "conv_out")
    assert enc["conv_in"]["bias"] == ("conv_out",)
    assert enc["conv_norm_out"]["scale"] == ("norm",)
    assert enc["mid_block"]["attentions_0"]["to_q"]["kernel"] == ("conv_in", "conv_out")
    leaves = jax.tree_util.tree_leaves(names, is_leaf=lambda n: isinstance(n, tuple))
    assert all(isinstance(n, tuple) for n in leaves)


def test_encode_matches_reference(parity_io, f32_outputs):
    mean, logvar, _ = f32_outputs
    s = float(parity_io["vae_scaling_factor"])
    want = _nhwc(parity_io["vae_latents"])
    assert mean.shape == want.shape == (2, 8, 8, 16)
    assert logvar.shape == mean.shape
    err = np.abs(mean * s - want).max()
    assert err < PARITY_TOL, err


def test_decode_matches_reference(parity_io, f32_outputs):
    _, _, images = f32_outputs
    want = _nhwc(parity_io["vae_decoded_images"])
    assert images.shape == want.shape == (2, 64, 64, 3)
    err = np.abs(images - want).max()
    assert err < PARITY_TOL, err


def test_call_reconstructs_from_mean(parity_io, tiny_cfg, variables, f32_outputs):
    mean, _, _ = f32_outputs
    model = AutoencoderKL(tiny_cfg)
    images = _nhwc(parity_io["images"])
    recon = np.asarray(jax.jit(model.apply)(variables, images))
    direct = np.asarray(jax.jit(lambda v, z: model.apply(v, z, method=AutoencoderKL.decode))(variables, mean))
    np.testing.assert_allclose(recon, direct, atol=1e-5)


def test_bfloat16_compute_close_to_float32(parity_io, tiny_cfg, variables, f32_outputs):
    s = float(parity_io["vae_scaling_factor"])
    mean32, _, img32 = f32_outputs
    mean16, _, img16 = _run(
        tiny_cfg, jnp.bfloat16, variables, _nhwc(parity_io["images"]), _nhwc(parity_io["vae_latents"]) / s
    )
    assert mean16.dtype == img16.dtype == np.float32
    enc_err = np.abs(mean16 - mean32).max()
    dec_err = np.abs(img16 - img32).max()
    assert enc_err < BF16_ENCODE_TOL, enc_err
    assert dec_err < BF16_DECODE_TOL, dec_err


def test_wrong_config_names_key_and_shapes(tensors):
    with pytest.raises(ValueError) as info:
        vae_params_from_torch(tensors, STANDARD_VAE)
    msg = str(info.value)
    assert "vae_config" in msg
    # One concrete line: the decoder's conv_in is 32 wide in the fixture, 512 in the standard VAE.
    assert re.search(
        r"'vae\.vae\.decoder\.conv_in\.weight': checkpoint \(32, 16, 3, 3\), expected \(512, 16, 3, 3\)", msg
    ), msg


def test_missing_key(tensors, tiny_cfg):
    key = "vae.vae.encoder.down_blocks.1.resnets.0.conv_shortcut.weight"
    partial = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(ValueError, match=re.escape(f"missing tensor '{key}' (expected shape (32, 16, 1, 1))")):
        vae_params_from_torch(partial, tiny_cfg)


def test_unexpected_key(tensors, tiny_cfg):
    key = "vae.vae.encoder.down_blocks.0.resnets.0.conv_shortcut.weight"
    extra = dict(tensors)
    extra[key] = np.zeros((16, 16, 1, 1), np.float32)
    with pytest.raises(ValueError, match=re.escape(f"unexpected tensor '{key}' with shape (16, 16, 1, 1)")):
        vae_params_from_torch(extra, tiny_cfg)


def test_wrong_prefix(tensors, tiny_cfg):
    with pytest.raises(ValueError, match="no tensors start with prefix 'first_stage_model.'"):
        vae_params_from_torch(tensors, tiny_cfg, prefix="first_stage_model.")


def test_bare_prefix_and_legacy_attention_names(tensors, tiny_cfg, variables):
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in tensors.items():
        if not k.startswith("vae.vae."):
            continue
        k = k[len("vae.vae."):]
        for new, name in legacy.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{name}.")
        old[k] = v
    assert any(".query." in k for k in old)
    params = vae_params_from_torch(old, tiny_cfg, prefix="")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, variables["params"])


def test_from_diffusers_round_trip(tiny_cfg):
    d = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": 0.75,
        "mid_block_add_attention": True,
    }
    assert VAEConfig.from_diffusers(d) == STANDARD_VAE
    assert VAEConfig.from_diffusers(tiny_cfg.to_diffusers()) == tiny_cfg
    assert VAEConfig.from_diffusers({**d, "latent_channels": 4}).latent_channels == 4


def test_from_diffusers_rejects_unsupported():
    with pytest.raises(ValueError, match="'gelu'"):
        VAEConfig.from_diffusers({"act_fn": "gelu"})
    with pytest.raises(ValueError, match="'AttnDownEncoderBlock2D'"):
        VAEConfig.from_diffusers({"down_block_types": ["AttnDownEncoderBlock2D"] + ["DownEncoderBlock2D"] * 3})
    with pytest.raises(ValueError, match="'AttnUpDecoderBlock2D'"):
        VAEConfig.from_diffusers({"up_block_types": ["AttnUpDecoderBlock2D"] * 4})
