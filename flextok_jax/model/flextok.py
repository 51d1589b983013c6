"""FlexTok: image -> ordered token ids -> image, wiring the VAE, encoder, FSQ, decoder and sampler.

Parameters are a plain pytree ``{"vae": ..., "encoder": ..., "decoder": ...}`` (each the contents
of a linen ``params`` collection); ``FlexTok`` holds only the architecture and jitted functions.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flextok_jax import flow
from flextok_jax.model.config import FlexTokConfig
from flextok_jax.model.decoder import FlexTokDecoder
from flextok_jax.model.encoder import FlexTokEncoder
from flextok_jax.model.fsq import codes_to_ids, fsq_quantize, ids_to_codes
from flextok_jax.model.vae import AutoencoderKL

Params = dict[str, Any]
# (target latents [B, h, w, C], decoded latents [B, h, w, C]) -> distances [B]; smaller is closer.
Metric = Callable[[jax.Array, jax.Array], jax.Array]
# Images may overshoot [-1, 1] by resampling ringing; beyond this they are surely in another range.
_RANGE_SLACK = 1e-2


class FlexTok:
    """The FlexTok tokenizer. See ``tokenize`` / ``detokenize``.

    ``dtype`` is the computation dtype (float32 or bfloat16); parameters stay float32.
    """

    def __init__(self, config: FlexTokConfig, dtype: Any = jnp.float32):
        if config.vae is not None and config.vae.latent_channels != config.latent_channels:
            raise ValueError(
                f"VAE latent_channels {config.vae.latent_channels} != FlexTok latent_channels {config.latent_channels}"
            )
        if config.vae is None and config.latent_channels != 3:
            raise ValueError(f"a pixel-space model (vae=None) needs latent_channels=3, got {config.latent_channels}")
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.vae = None if config.vae is None else AutoencoderKL(config.vae, dtype=dtype)
        self.encoder = FlexTokEncoder(config, dtype=dtype)
        self.decoder = FlexTokDecoder(config, dtype=dtype)

    # ------------------------------------------------------------------ parameters
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the latents of an image of ``config.image_size``."""
        f = self.config.vae_downsample
        hh, ww = self.config.image_size
        return hh // f, ww // f, self.config.latent_channels

    def init_boxed(self, rng: jax.Array) -> Params:
        """Random parameters, still wrapped in ``nn.LogicallyPartitioned`` boxes (for sharding).

        No parameter's shape depends on the image size, so init traces a one-patch image: the
        full-resolution VAE would cost over a minute of eager convolutions at the released size.
        """
        r_vae, r_enc, r_dec = jax.random.split(rng, 3)
        cfg = self.config
        f = cfg.vae_downsample
        latents = jnp.zeros((1, *cfg.patch_size, cfg.latent_channels))
        codes = jnp.zeros((1, 1, cfg.code_dim))
        params = {
            "encoder": self.encoder.init(r_enc, latents)["params"],
            "decoder": self.decoder.init(r_dec, latents, jnp.ones((1,)), codes, jnp.ones((1,), jnp.int32),
                                         method=FlexTokDecoder.velocity)["params"],
        }
        if self.vae is not None:
            params["vae"] = self.vae.init(r_vae, jnp.zeros((1, cfg.patch_size[0] * f, cfg.patch_size[1] * f, 3)))["params"]
        return params

    def init(self, rng: jax.Array) -> Params:
        """Random parameters as a plain pytree."""
        return nn.unbox(self.init_boxed(rng))

    def logical_specs(self) -> Any:
        """PartitionSpecs of logical axis names for every parameter (no memory is allocated)."""
        return nn.get_partition_spec(jax.eval_shape(self.init_boxed, jax.random.key(0)))

    # ------------------------------------------------------------------ pieces
    def encode_latents(self, params: Params, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, 3] in [-1, 1] -> scaled latents [B, H/f, W/f, C].

        The posterior mean, or — when ``config.vae_sample_posterior`` (as the checkpoint asks)
        and an ``rng`` is given — a sample mean + std * noise, as the official VAE wrapper draws.
        """
        if self.vae is None:
            return images.astype(jnp.float32)
        mean, logvar = self.vae.apply({"params": params["vae"]}, images, method=AutoencoderKL.encode)
        z = mean.astype(jnp.float32)
        if self.config.vae_sample_posterior and rng is not None:
            z = z + jnp.exp(0.5 * logvar) * jax.random.normal(rng, z.shape, jnp.float32)
        return (z - self.config.vae_shift_factor) * self.config.vae_scaling_factor

    def decode_latents(self, params: Params, latents: jax.Array) -> jax.Array:
        """scaled latents [B, h, w, C] -> images [B, H, W, 3] (not clipped)."""
        if self.vae is None:
            return latents.astype(jnp.float32)
        z = latents / self.config.vae_scaling_factor + self.config.vae_shift_factor
        return self.vae.apply({"params": params["vae"]}, z, method=AutoencoderKL.decode).astype(jnp.float32)

    def encode_registers(self, params: Params, latents: jax.Array, num_tokens: int | None = None) -> jax.Array:
        """latents [B, h, w, C] -> FSQ inputs [B, k, code_dim] for the first k registers."""
        return self.encoder.apply({"params": params["encoder"]}, latents, num_tokens)

    def encode(self, params: Params, images: jax.Array, num_tokens: int | None = None,
               rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """images [B, H, W, 3] in [-1, 1] -> (latents [B, h, w, C], FSQ codes [B, k, code_dim]).

        k = ``num_tokens`` (default n_registers); ``rng`` samples the VAE posterior where the
        config asks for it (``encode_latents``). See ``encode_with_fsq_inputs``.
        """
        latents, _, codes = self.encode_with_fsq_inputs(params, images, num_tokens, rng)
        return latents, codes

    def encode_with_fsq_inputs(self, params: Params, images: jax.Array, num_tokens: int | None = None,
                               rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The one path image -> VAE -> encoder -> FSQ (straight-through, so the encoder trains
        through it; no gradient reaches the VAE): (latents [B, h, w, C], FSQ inputs z
        [B, k, code_dim], codes [B, k, code_dim]). Training reads z to keep FSQ unsaturated."""
        latents = jax.lax.stop_gradient(self.encode_latents(params, images, rng))
        z = self.encode_registers(params, latents, num_tokens)
        return latents, z, fsq_quantize(z, self.config.fsq_levels)

    def velocity(
        self,
        params: Params,
        x_t: jax.Array,
        t: jax.Array,
        codes: jax.Array,
        keep_k: jax.Array,
        null_cond: jax.Array | None = None,
        collapse: bool = False,
    ) -> jax.Array:
        """One decoder forward: the flow velocity [B, h, w, C] (``FlexTokDecoder.velocity``)."""
        return self.decoder.apply({"params": params["decoder"]}, x_t, t, codes, keep_k, null_cond, collapse,
                                  method=FlexTokDecoder.velocity)

    def velocity_with_null(
        self, params: Params, x_t: jax.Array, t: jax.Array, codes: jax.Array, keep_k: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(conditional, null-condition) velocities from one packed forward
        (``FlexTokDecoder.velocity_with_null``); codes: the first max(keep_k) rows."""
        return self.decoder.apply({"params": params["decoder"]}, x_t, t, codes, keep_k,
                                  method=FlexTokDecoder.velocity_with_null)

    def velocity_and_features(
        self, params: Params, x_t: jax.Array, t: jax.Array, codes: jax.Array, keep_k: jax.Array,
        null_cond: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """(velocity, decoder patch features for REPA [B, P, D]) (``FlexTokDecoder.velocity_and_features``)."""
        return self.decoder.apply({"params": params["decoder"]}, x_t, t, codes, keep_k, null_cond,
                                  method=FlexTokDecoder.velocity_and_features)

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: Any) -> jax.Array:
        """Shape, dtype and value checks. A global jax.Array that spans several processes is
        checked on this process's shards (each process checks its own), never gathered."""
        shape = tuple(np.shape(images))
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] (NHWC RGB), got shape {shape}")
        dtype = np.dtype(images.dtype) if hasattr(images, "dtype") else np.asarray(images).dtype
        if not np.issubdtype(dtype, np.floating) and dtype != jnp.bfloat16:
            raise TypeError(
                f"images must be floating point in [-1, 1], got dtype {dtype}; "
                "convert uint8 pictures with x / 127.5 - 1"
            )
        unit = self.config.vae_downsample * self.config.patch_size[0]
        max_h, max_w = self.config.image_size
        h, w = shape[1], shape[2]
        if h % unit or w % unit or h > max_h or w > max_w:
            raise ValueError(
                f"image size {h}x{w} must be a multiple of {unit} (VAE x patch) and at most "
                f"{max_h}x{max_w} (the position-embedding grid); resize to {max_h}x{max_w}"
            )
        check_image_values(images)
        return images if isinstance(images, jax.Array) and images.dtype == jnp.float32 else jnp.asarray(images, jnp.float32)

    def _check_num_tokens(self, k: Any, batch: int, name: str) -> np.ndarray:
        n = self.config.n_registers
        arr = np.asarray(k)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be an int or an int array [B], got dtype {arr.dtype}")
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != batch):
            raise ValueError(f"{name} must be an int or an int array of shape [{batch}], got shape {arr.shape}")
        if arr.size and (arr.min() < 1 or arr.max() > n):
            raise ValueError(f"{name} must lie in [1, {n}] (n_registers), got values {arr.tolist()}")
        return np.broadcast_to(arr, (batch,)).astype(np.int32)

    # ------------------------------------------------------------------ public API
    def tokenize(self, params: Params, images: jax.Array, num_tokens: int | None = None) -> jax.Array:
        """images float [B, H, W, 3] in [-1, 1] -> int32 token ids [B, k].

        k = ``num_tokens`` (default: all n_registers); only registers < k are computed, and the
        ids equal the first k of a full run.
        """
        images = self._check_images(images)
        k = self.config.n_registers if num_tokens is None else int(self._check_num_tokens(num_tokens, 1, "num_tokens")[0])
        return self._tokenize_jit(params, images, k)

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _tokenize_jit(self, params: Params, images: jax.Array, k: int) -> jax.Array:
        return codes_to_ids(self.encode(params, images, k)[1], self.config.fsq_levels)

    def detokenize(
        self,
        params: Params,
        tokens: Any,
        keep_k: Any = None,
        num_steps: int = 25,
        guidance_scale: float = 1.0,
        guidance: str = "cfg",
        noise: Any = None,
        rng: jax.Array | None = None,
        *,
        exact_shortcut: bool = True,
    ) -> jax.Array:
        """token ids int [B, n] (n <= n_registers) -> images float32 [B, H, W, 3].

        ``keep_k``: None (all n given), an int or an int array [B]; tokens from position keep_k
        on are replaced by the mask token. ``noise`` [B, h, w, C] is the start latent at t=1
        (deterministic); otherwise it is drawn from ``rng`` (default key 0).
        ``exact_shortcut``: decode with the collapsed register sequence (see ``sample_latents``).
        """
        latents = self.sample_latents(
            params, tokens, keep_k, num_steps, guidance_scale, guidance, noise, rng,
            exact_shortcut=exact_shortcut,
        )
        return self._decode_jit(params, latents)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _decode_jit(self, params: Params, latents: jax.Array) -> jax.Array:
        return self.decode_latents(params, latents)

    def sample_latents(
        self,
        params: Params,
        tokens: Any,
        keep_k: Any = None,
        num_steps: int = 25,
        guidance_scale: float = 1.0,
        guidance: str = "cfg",
        noise: Any = None,
        rng: jax.Array | None = None,
        *,
        exact_shortcut: bool = True,
    ) -> jax.Array:
        """``detokenize`` without the VAE decoder: returns scaled latents [B, h, w, C].

        With ``exact_shortcut`` (and ``config.register_posemb_before_dropout``, as in the released
        models) the n - k masked registers are computed once (``FlexTokDecoder`` ``collapse``),
        and the null pass of guidance (the patches plus one null slot) is packed into the same
        forward as the conditional pass (``with_null``). Images are grouped
        by the next power of two of their keep_k, so each group runs a register sequence of that
        length (and at most log2(n) + 1 programs get compiled); results come back in input order.
        """
        cfg = self.config
        tokens_np = np.asarray(tokens)
        if tokens_np.ndim != 2 or not np.issubdtype(tokens_np.dtype, np.integer):
            raise ValueError(f"tokens must be an int array [B, n], got shape {tokens_np.shape} dtype {tokens_np.dtype}")
        b, n_given = tokens_np.shape
        if not 1 <= n_given <= cfg.n_registers:
            raise ValueError(f"tokens has {n_given} per image; expected 1..{cfg.n_registers} (n_registers)")
        if tokens_np.size and (tokens_np.min() < 0 or tokens_np.max() >= cfg.vocab_size):
            bad = tokens_np[(tokens_np < 0) | (tokens_np >= cfg.vocab_size)]
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}), got e.g. {bad[:4].tolist()}")
        keep = self._check_num_tokens(n_given if keep_k is None else keep_k, b, "keep_k")
        if keep.max() > n_given:
            raise ValueError(f"keep_k {keep.tolist()} exceeds the {n_given} tokens given per image")
        if guidance not in ("cfg", "apg"):
            raise ValueError(f"guidance must be 'cfg' or 'apg', got {guidance!r}")
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        latent_shape = (b,) + self.latent_shape
        if noise is None:
            noise = jax.random.normal(jax.random.key(0) if rng is None else rng, latent_shape, jnp.float32)
        elif tuple(np.shape(noise)) != latent_shape:
            raise ValueError(f"noise must have shape {latent_shape} (NHWC latents), got {tuple(np.shape(noise))}")
        noise = jnp.asarray(noise, jnp.float32)
        padded = np.zeros((b, cfg.n_registers), np.int32)
        padded[:, :n_given] = tokens_np
        use_guidance = float(guidance_scale) != 1.0
        static = (int(num_steps), guidance, use_guidance)
        w = jnp.float32(guidance_scale)
        if not (exact_shortcut and cfg.register_posemb_before_dropout):
            return self._sample_jit(params, jnp.asarray(padded), jnp.asarray(keep), noise, w, *static, False)
        slots = register_buckets(keep, cfg.n_registers)
        parts, order = [], []
        for s in np.unique(slots):
            idx = np.nonzero(slots == s)[0]
            parts.append(self._sample_jit(
                params, jnp.asarray(padded[idx, :s]), jnp.asarray(keep[idx]),
                noise[idx] if len(idx) < b else noise, w, *static, True,
            ))
            order.append(idx)
        if len(parts) == 1:
            return parts[0]
        inverse = np.argsort(np.concatenate(order))
        return jnp.concatenate(parts)[inverse]

    @functools.partial(jax.jit, static_argnums=(0, 6, 7, 8, 9))
    def _sample_jit(self, params, tokens, keep_k, noise, guidance_scale, num_steps, guidance, use_guidance, collapse):
        """tokens [b, s] (s = n_registers, or the bucket size when ``collapse``) -> latents."""
        codes = ids_to_codes(tokens, self.config.fsq_levels)
        return self.sample_codes(params, codes, keep_k, noise, guidance_scale, num_steps, guidance, use_guidance, collapse)

    def sample_codes(
        self,
        params: Params,
        codes: jax.Array,
        keep_k: jax.Array,
        noise: jax.Array,
        guidance_scale: jax.Array | float,
        num_steps: int,
        guidance: str = "cfg",
        use_guidance: bool = False,
        collapse: bool = True,
    ) -> jax.Array:
        """Traceable sampler: codes [B, S, code_dim] (S = n_registers, or >= max(keep_k) when
        ``collapse``), keep_k int [B], noise [B, h, w, C] -> latents at t = 0, float32."""
        b = codes.shape[0]

        def velocity_fn(x, t, with_null):
            if collapse:
                if with_null:
                    return self.velocity_with_null(params, x, t, codes, keep_k)
                return self.velocity(params, x, t, codes, keep_k, collapse=True), None
            if not with_null:
                return self.velocity(params, x, t, codes, keep_k), None
            # Conditional and unconditional passes as one batched forward.
            v = self.velocity(
                params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                jnp.concatenate([codes, codes]), jnp.concatenate([keep_k, keep_k]),
                jnp.arange(2 * b) >= b,
            )
            return v[:b], v[b:]

        return flow.euler_sample(velocity_fn, noise, num_steps, guidance_scale, guidance, use_guidance)

    def reconstruction_distances(
        self,
        params: Params,
        images: Any,
        ks: Any = None,
        num_steps: int = 4,
        seed: int = 0,
        metric: Metric | None = None,
    ) -> tuple[jax.Array, np.ndarray, jax.Array]:
        """images [B, H, W, 3] -> (ids int32 [B, n], ks int32 [K], distances float32 [B, K]).

        distances[b, j] = ``metric(latents of image b, latents decoded from its first ks[j] ids)``
        (default ``mean_squared_distance``; pixels for a pixel-space model). The decode is a
        deterministic ``num_steps``-step Euler flow without guidance from one fixed start noise
        drawn from ``jax.random.key(seed)`` and shared by every image and k, so an image's
        distances do not depend on the batch it comes in. All B * K (image, k) pairs go through
        one ``sample_latents`` call (its per-image keep_k bucketing). ``ks`` default:
        ``token_budgets(n)``.
        """
        images = self._check_images(images)
        n = self.config.n_registers
        ks_np = np.asarray(token_budgets(n) if ks is None else ks)
        if ks_np.ndim != 1 or ks_np.size == 0:
            raise ValueError(f"ks must be a non-empty int list, got shape {ks_np.shape}")
        ks_np = self._check_num_tokens(ks_np, ks_np.size, "ks")
        if np.any(np.diff(ks_np) <= 0):
            raise ValueError(f"ks must be strictly increasing, got {ks_np.tolist()}")
        metric = mean_squared_distance if metric is None else metric
        b, num_k = images.shape[0], ks_np.size
        latents, ids = self._latents_and_ids_jit(params, images)  # one VAE + encoder pass for both
        noise = jax.random.normal(jax.random.key(seed), self.latent_shape, jnp.float32)
        # Image-major pairs: row b * K + j is image b decoded from its first ks[j] ids.
        pair_ids = np.repeat(np.asarray(ids), num_k, axis=0)
        pair_keep = np.tile(ks_np, b)
        decoded = self.sample_latents(params, pair_ids, pair_keep, num_steps,
                                      noise=jnp.broadcast_to(noise, (b * num_k,) + noise.shape))
        dist = jnp.asarray(metric(jnp.repeat(latents, num_k, axis=0), decoded), jnp.float32)
        if dist.shape != (b * num_k,):
            raise ValueError(f"metric must return one distance per image, shape [{b * num_k}]; got {dist.shape}")
        return ids, ks_np, dist.reshape(b, num_k)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _latents_and_ids_jit(self, params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        latents, codes = self.encode(params, images)
        return latents, codes_to_ids(codes, self.config.fsq_levels)

    def tokenize_adaptive(
        self,
        params: Params,
        images: Any,
        target: float,
        ks: Any = None,
        num_steps: int = 4,
        seed: int = 0,
        metric: Metric | None = None,
    ) -> "AdaptiveTokens":
        """The fewest tokens per image that reconstruct it to within ``target``.

        images [B, H, W, 3] in [-1, 1] -> ``AdaptiveTokens``: ids int32 [B, n] (all n; the
        image's tokens are ids[b, :num_tokens[b]]), num_tokens int32 [B] = the smallest k in
        ``ks`` (default 1, 2, 4, ..., n) whose distance (``reconstruction_distances``, same
        arguments) is <= target, or n where none is (``met`` False there).
        """
        target = float(target)
        if not np.isfinite(target) or target <= 0:
            raise ValueError(f"the quality target must be a finite distance > 0, got {target}")
        ids, ks_np, dist = self.reconstruction_distances(params, images, ks, num_steps, seed, metric)
        d = np.asarray(dist)
        chosen, met = fewest_tokens(d, ks_np, target, self.config.n_registers)
        return AdaptiveTokens(ids=ids, num_tokens=chosen, met=met, ks=ks_np, distances=d)

    def reconstruct(
        self,
        params: Params,
        images: jax.Array,
        ks: tuple[int, ...],
        noise: jax.Array,
        num_steps: int,
        guidance_scale: jax.Array | float = 1.0,
        guidance: str = "cfg",
        use_guidance: bool = False,
    ) -> jax.Array:
        """Traceable reconstruct-by-k: images [N, H, W, 3] -> [len(ks), N, H, W, 3] decoded from
        the first k tokens for each static k in ``ks``, with the same start noise [N, h, w, C]
        for every k (so columns differ only by the tokens they were given)."""
        n = self.config.n_registers
        _, codes = self.encode(params, images, max(ks))
        outs = []
        for k in ks:
            slots = int(register_buckets(np.array([k]), n)[0])
            collapse = self.config.register_posemb_before_dropout
            c = codes[:, :slots] if collapse else jnp.pad(codes, ((0, 0), (0, n - codes.shape[1]), (0, 0)))
            keep = jnp.full((images.shape[0],), k, jnp.int32)
            latents = self.sample_codes(params, c, keep, noise, guidance_scale, num_steps, guidance, use_guidance, collapse)
            outs.append(self.decode_latents(params, latents))
        return jnp.stack(outs)


@dataclasses.dataclass(frozen=True)
class AdaptiveTokens:
    """What ``FlexTok.tokenize_adaptive`` found for a batch of B images over K candidate k."""

    ids: jax.Array  # int32 [B, n]: every token; image b uses ids[b, :num_tokens[b]]
    num_tokens: np.ndarray  # int32 [B]: the chosen k
    met: np.ndarray  # bool [B]: whether some candidate k met the target
    ks: np.ndarray  # int32 [K]: the candidate k
    distances: np.ndarray  # float32 [B, K]: distance of each (image, candidate k)


def fewest_tokens(distances: np.ndarray, ks: Any, target: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen k int32 [B], met bool [B]) from distances [B, K] of each image decoded from its
    first ks[j] tokens: the smallest k whose distance is <= target; where none is, n (every
    token, not the last candidate)."""
    ok = np.asarray(distances) <= target
    met = ok.any(axis=1)
    chosen = np.where(met, np.asarray(ks)[np.argmax(ok, axis=1)], n).astype(np.int32)
    return chosen, met


def mean_squared_distance(target: jax.Array, decoded: jax.Array) -> jax.Array:
    """Mean over all but the batch axis of (target - decoded)^2, float32. [B, ...] x2 -> [B]."""
    diff = jnp.asarray(target, jnp.float32) - jnp.asarray(decoded, jnp.float32)
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


@jax.jit
def _value_stats(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(count of non-finite values, min, max of the finite ones), reduced on the devices."""
    finite = jnp.isfinite(x)
    x = x.astype(jnp.float32)
    return (x.size - jnp.count_nonzero(finite), jnp.min(jnp.where(finite, x, jnp.inf)),
            jnp.max(jnp.where(finite, x, -jnp.inf)))


def check_image_values(images: Any) -> None:
    """Reject non-finite values and values outside [-1, 1] (with a small slack). A jax.Array is
    reduced where it lives (no copy of the batch to the host); for a global array spanning
    several hosts every process takes part, as it does in the computation the check guards."""
    if np.size(images) == 0:
        return
    if isinstance(images, jax.Array):
        bad, lo, hi = (v.item() for v in jax.device_get(_value_stats(images)))
    else:
        x = np.asarray(images, np.float32)
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        lo, hi = (float(x[finite].min()), float(x[finite].max())) if bad < x.size else (0.0, 0.0)
    if bad:
        raise ValueError(f"images contain {int(bad)} non-finite values (NaN or inf); expected floats in [-1, 1]")
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(f"image values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")


def token_budgets(n: int) -> list[int]:
    """[1, 2, 4, ..., n] (n included even when it is not a power of two)."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else ks + [n]


def register_buckets(keep_k: np.ndarray, n: int) -> np.ndarray:
    """Register-sequence length per image: the next power of two >= keep_k, capped at n. [B] -> [B]."""
    k = np.maximum(np.asarray(keep_k, np.int64), 1)
    return np.minimum(2 ** np.ceil(np.log2(k)).astype(np.int64), n)
