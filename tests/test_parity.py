"""Parity with the official implementation: every array of flextok_tiny_io.npz.

Tolerances follow the parity README, section 5: ids and codes exact; single forward passes
<= 1e-4 max abs; 4-step samplers <= 1e-3.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from flextok_jax.model.decoder import timestep_sinusoid
from flextok_jax.model.fsq import codes_to_ids, fsq_quantize, ids_to_codes
from helpers import max_err, nchw, nhwc

FORWARD_TOL = 1e-4
SAMPLER_TOL = 1e-3


def test_config_read_from_metadata(tiny, parity_io):
    model, _ = tiny
    cfg = model.config
    assert cfg.n_registers == 16 and cfg.fsq_levels == (8, 8, 8, 5, 5, 5)
    assert (cfg.encoder.dim, cfg.encoder.depth, cfg.encoder.head_dim) == (64, 2, 32)
    assert (cfg.decoder.dim, cfg.decoder.depth, cfg.decoder.head_dim) == (64, 2, 32)
    assert cfg.vae_scaling_factor == pytest.approx(float(parity_io["vae_scaling_factor"]))
    assert cfg.image_size == (64, 64) and cfg.patch_grid == (4, 4)
    assert cfg.repa_layer == 1 and cfg.register_posemb_before_dropout


def test_fsq_random_inputs(parity_io):
    levels = tuple(int(v) for v in parity_io["fsq_levels"])
    codes = fsq_quantize(jnp.asarray(parity_io["fsq_z"]), levels)
    np.testing.assert_array_equal(np.asarray(codes), parity_io["fsq_z_codes"])
    ids = codes_to_ids(codes, levels)
    np.testing.assert_array_equal(np.asarray(ids), parity_io["fsq_z_ids"])
    np.testing.assert_array_equal(np.asarray(ids_to_codes(ids, levels)), parity_io["fsq_z_codes"])
    assert int(codes_to_ids(fsq_quantize(jnp.zeros((1, 6)), levels), levels)[0]) == 32036


def test_time_embedding(tiny, parity_io):
    model, params = tiny
    t = jnp.asarray(parity_io["time_t"])
    # The official float32 table is reproduced bit for bit up to cos/sin rounding (measured 6e-8);
    # a frequency one ulp off would show as ~6e-5 here.
    assert max_err(timestep_sinusoid(t, model.config.max_timestep), parity_io["time_freq"]) <= 1e-6
    from flextok_jax.model.decoder import TimestepEmbedder

    emb = TimestepEmbedder(model.config.decoder.dim, model.config.max_timestep).apply(
        {"params": params["decoder"]["time_embed"]}, t
    )
    assert max_err(emb, parity_io["time_emb"]) <= FORWARD_TOL


def test_vae_latents(tiny, parity_io):
    model, params = tiny
    latents = model.encode_latents(params, jnp.asarray(nhwc(parity_io["images"])))
    assert max_err(nchw(latents), parity_io["vae_latents"]) <= FORWARD_TOL
    images = model.decode_latents(params, jnp.asarray(nhwc(parity_io["vae_latents"])))
    assert max_err(nchw(images), parity_io["vae_decoded_images"]) <= FORWARD_TOL


def test_encoder_and_tokens(tiny, parity_io):
    model, params = tiny
    z = model.encode_registers(params, jnp.asarray(nhwc(parity_io["vae_latents"])))
    assert max_err(z, parity_io["enc_pre_fsq"]) <= FORWARD_TOL
    codes = fsq_quantize(z, model.config.fsq_levels)
    np.testing.assert_array_equal(np.asarray(codes), parity_io["fsq_codes"])
    tokens = model.tokenize(params, nhwc(parity_io["images"]))
    assert tokens.dtype == jnp.int32 and tokens.shape == (2, 16)
    np.testing.assert_array_equal(np.asarray(tokens), parity_io["token_ids"])


@pytest.mark.parametrize("null", [False, True])
def test_decoder_velocity(tiny, parity_io, null):
    model, params = tiny
    v = model.velocity(
        params,
        jnp.asarray(nhwc(parity_io["dec_noised_latents"])),
        jnp.asarray(parity_io["dec_t"]),
        jnp.asarray(parity_io["fsq_codes"]),
        jnp.asarray(parity_io["dec_keep_k"]),
        jnp.full((2,), null),
    )
    want = parity_io["dec_velocity_null" if null else "dec_velocity"]
    assert max_err(nchw(v), want) <= FORWARD_TOL


@pytest.mark.parametrize(
    "name,scale,guidance",
    [("plain", 1.0, "cfg"), ("cfg", None, "cfg"), ("apg", None, "apg")],
)
def test_detokenize(tiny, parity_io, name, scale, guidance):
    model, params = tiny
    scale = float(parity_io["detok_guidance_scale"]) if scale is None else scale
    kwargs = dict(
        keep_k=parity_io["detok_keep_k"],
        num_steps=int(parity_io["detok_timesteps"]),
        guidance_scale=scale,
        guidance=guidance,
        noise=nhwc(parity_io["detok_noise"]),
    )
    latents = model.sample_latents(params, parity_io["token_ids"], **kwargs)
    assert max_err(nchw(latents), parity_io[f"detok_latents_{name}"]) <= SAMPLER_TOL
    images = model.detokenize(params, parity_io["token_ids"], **kwargs)
    assert images.shape == (2, 64, 64, 3) and images.dtype == jnp.float32
    assert max_err(nchw(images), parity_io[f"detok_images_{name}"]) <= SAMPLER_TOL


def test_detokenize_truncated_lists_equal_keep_k(tiny, parity_io):
    """A list of 4 tokens decodes like the full list with keep_k=4 (padded rows are masked)."""
    model, params = tiny
    noise = nhwc(parity_io["detok_noise"])[:1]
    a = model.sample_latents(params, parity_io["token_ids"][:1, :4], num_steps=2, noise=noise)
    b = model.sample_latents(params, parity_io["token_ids"][:1], keep_k=4, num_steps=2, noise=noise)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
