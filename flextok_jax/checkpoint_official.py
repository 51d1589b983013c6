"""Load checkpoints in the official FlexTok format (safetensors + hydra config in the metadata).

The metadata is parsed as plain Python literals only (``ast.literal_eval``): nothing it names is
imported, instantiated or evaluated. Every size comes from the metadata, except the VAE's
architecture, which the official format does not record (pass ``vae_config`` for a non-standard
VAE). Every tensor is matched to exactly one parameter: a missing, extra or mis-shaped tensor is
an error naming the key and both shapes.
"""
from __future__ import annotations

import ast
import os
import struct
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from flextok_jax.hub import resolve_checkpoint
from flextok_jax.model.config import FlexTokConfig, TransformerConfig
from flextok_jax.model.flextok import FlexTok
from flextok_jax.model.layers import sincos_posemb_2d
from flextok_jax.model.vae import STANDARD_VAE, VAEConfig, vae_params_from_torch

FLEXTOK_TARGET = "flextok.flextok_wrapper.FlexTok"
ENC = "encoder.module_dict."
DEC = "decoder.module_dict."

# Module targets whose computation this port implements, by role.
_KNOWN_TARGETS = {
    "flextok.model.utils.wrappers.SequentialModuleDictWrapper",
    "flextok.model.utils.dict_ops.PerSampleOp",
    "flextok.model.utils.dict_ops.channels_first_to_last",
    "flextok.model.utils.dict_ops.channels_last_to_first",
    "flextok.model.preprocessors.patching.PatchEmbedder",
    "flextok.model.utils.posembs.PositionalEmbeddingAdder",
    "flextok.model.preprocessors.registers.Registers1D",
    "flextok.model.preprocessors.flex_seq_packing.BlockWiseSequencePacker",
    "flextok.model.trunks.transformers.FlexTransformer",
    "flextok.model.postprocessors.seq_unpacking.SequenceUnpacker",
    "flextok.model.postprocessors.heads.LinearHead",
    "flextok.model.postprocessors.heads.ToPatchesLinearHead",
    "flextok.regularizers.quantize_fsq.FSQ",
    "flextok.model.preprocessors.linear.LinearLayer",
    "flextok.model.preprocessors.token_dropout.MaskedNestedDropout",
    "flextok.model.preprocessors.nullcond.LearnedNullCond",
    "flextok.model.preprocessors.time_embedding.TimestepEmbedder",
    "flextok.vae_wrapper.StableDiffusionVAE",
    "flextok.flow_matching.noise_modules.MinRFNoiseModule",
    "flextok.flow_matching.pipelines.MinRFPipeline",
}


class CheckpointError(ValueError):
    """The checkpoint does not match what this port implements."""


# A header holds one short JSON entry per tensor plus the config: kilobytes to a few megabytes.
MAX_HEADER_BYTES = 100 * 2**20


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header's ``__metadata__`` str->str map, read without loading tensors.

    The header length (the file's first 8 bytes) is checked before the header is parsed, so a
    corrupt or hostile length never makes the reader allocate it.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read(8)
    if len(raw) != 8:
        raise CheckpointError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: safetensors header of {n} bytes is implausibly large (at most {MAX_HEADER_BYTES})"
        )
    try:
        with safe_open(path, "np") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e


def parse_official_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """str->str metadata -> nested dict of plain values (``ast.literal_eval`` per value).

    A value that is not a literal is kept as its raw string (the official writer does this only
    for ``_target_``). ``literal_eval`` builds literals only; it never calls or imports anything.
    """
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = value
    return out


def _check_targets(node: Any, where: str) -> None:
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and target != FLEXTOK_TARGET and target not in _KNOWN_TARGETS:
            raise CheckpointError(f"unknown module target {target!r} at {where}; this port cannot reproduce it")
        for k, v in node.items():
            _check_targets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_targets(v, f"{where}[{i}]")


def _get(d: Mapping[str, Any], path: str, default: Any = KeyError) -> Any:
    node: Any = d
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is KeyError:
                raise CheckpointError(f"checkpoint metadata lacks {path!r}")
            return default
        node = node[part]
    return node


def config_from_official(meta: Mapping[str, Any], vae_config: VAEConfig | None = None) -> FlexTokConfig:
    """Our ``FlexTokConfig`` from the parsed official hydra config."""
    target = meta.get("_target_")
    if target != FLEXTOK_TARGET:
        raise CheckpointError(f"top-level _target_ is {target!r}, expected {FLEXTOK_TARGET!r}")
    _check_targets(meta, "")
    enc, dec = _get(meta, "encoder.module_dict"), _get(meta, "decoder.module_dict")

    enc_mask = _get(enc, "enc_seq_packer.mask_mode")
    dec_mask = _get(dec, "dec_seq_packer.mask_mode")
    if enc_mask != "causal_last" or dec_mask != "full":
        raise CheckpointError(f"mask modes encoder={enc_mask!r}, decoder={dec_mask!r}; expected 'causal_last' and 'full'")
    if _get(dec, "dec_transformer.adaLN_expansion", 1) != 2 or not _get(dec, "dec_seq_packer.per_subseq_embs", False):
        raise CheckpointError("decoder must use per-sub-sequence adaLN (adaLN_expansion=2, per_subseq_embs=True)")
    for where in ("enc_posemb_module", "dec_patches_posemb_module"):
        kind = (_get(enc if where.startswith("enc") else dec, f"{where}.posemb_type"),
                _get(enc if where.startswith("enc") else dec, f"{where}.posemb_scaling", "absolute"))
        if kind != ("sincos", "absolute"):
            raise CheckpointError(f"{where}: posemb {kind} not supported (expected sincos, absolute)")
    if _get(dec, "dec_registers_posemb_module.posemb_type") != "learnable_sum":
        raise CheckpointError("dec_registers_posemb_module must be 'learnable_sum'")

    n_reg = int(_get(enc, "enc_register_module.n_max"))
    dec_reg = list(_get(dec, "dec_registers_posemb_module.max_sizes"))
    if dec_reg != [n_reg]:
        raise CheckpointError(f"decoder register posemb max_sizes {dec_reg} != encoder n_max {n_reg}")
    patch = tuple(int(p) for p in _get(enc, "enc_patch_emb.patch_sizes"))
    if tuple(_get(dec, "dec_noise_patch_emb.patch_sizes")) != patch:
        raise CheckpointError("encoder and decoder patch sizes differ")
    grid = tuple(int(g) for g in _get(enc, "enc_posemb_module.max_sizes"))
    levels = tuple(int(v) for v in _get(meta, "regularizer.levels"))
    latent_channels = int(_get(meta, "vae.latent_channels"))
    for key in ("enc_patch_emb.channels_in",):
        if int(_get(enc, key)) != latent_channels:
            raise CheckpointError(f"encoder {key} != vae.latent_channels {latent_channels}")
    if int(_get(enc, "enc_to_latents.dim_out")) != len(levels):
        raise CheckpointError("enc_to_latents.dim_out does not match the number of FSQ levels")

    def trunk(d: Mapping[str, Any], name: str) -> TransformerConfig:
        t = _get(d, name)
        return TransformerConfig(
            dim=int(t["dim"]), depth=int(t["depth"]), head_dim=int(t.get("head_dim", 64)),
            mlp_ratio=float(t.get("mlp_ratio", 4.0)),
        )

    # The official wrapper samples mean + std * noise when this is True, its default when the
    # field is absent; FlexTok.encode_latents does so when given an rng (training always is).
    sample_posterior = bool(_get(meta, "vae.sample_posterior", True))
    repa = _get(dec, "dec_transformer.intermediate_layers", None)
    order = list(dec)
    posemb_first = order.index("dec_registers_posemb_module") < order.index("dec_nested_dropout")
    vae = STANDARD_VAE if vae_config is None else vae_config
    if vae.latent_channels != latent_channels:
        vae = VAEConfig(**{**vae.__dict__, "latent_channels": latent_channels})
    return FlexTokConfig(
        encoder=trunk(enc, "enc_transformer"),
        decoder=trunk(dec, "dec_transformer"),
        n_registers=n_reg,
        fsq_levels=levels,
        latent_channels=latent_channels,
        patch_size=patch,
        patch_grid=grid,
        vae=vae,
        vae_scaling_factor=float(_get(meta, "vae.scaling_factor", 1.0)),
        vae_shift_factor=float(_get(meta, "vae.shift_factor", 0.0) or 0.0),
        vae_sample_posterior=sample_posterior,
        max_timestep=float(_get(dec, "dec_time_embedder.max_timestep", 1.0)),
        repa_layer=int(repa[0]) if repa else None,
        register_posemb_before_dropout=posemb_first,
    )


def _linear(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


def _key_map(config: FlexTokConfig) -> dict[str, tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]]]:
    """torch key -> (our parameter path, layout transform) for the encoder and decoder."""
    ident = lambda w: w  # noqa: E731
    m: dict[str, tuple[tuple[str, ...], Callable]] = {}

    def linear(torch_prefix: str, path: tuple[str, ...], bias: bool = True) -> None:
        m[f"{torch_prefix}.weight"] = (path + ("kernel",), _linear)
        if bias:
            m[f"{torch_prefix}.bias"] = (path + ("bias",), ident)

    def blocks(torch_prefix: str, root: str, depth: int, adaln: bool) -> None:
        for i in range(depth):
            tp, op = f"{torch_prefix}.blocks.{i}", (root, f"blocks_{i}")
            for name in ("wq", "wk", "wv", "proj"):
                linear(f"{tp}.attn.{name}", op + ("attn", name), bias=False)
            for name in ("fc1", "fc2", "fc3"):
                linear(f"{tp}.mlp.{name}", op + ("mlp", name), bias=False)
            if adaln:
                linear(f"{tp}.adaLN_modulation.1", op + ("adaln",))

    linear(ENC + "enc_patch_emb.patch_proj", ("encoder", "patch_embed"))
    m[ENC + "enc_register_module.registers"] = (("encoder", "registers"), ident)
    blocks(ENC + "enc_transformer", "encoder", config.encoder.depth, adaln=False)
    linear(ENC + "enc_to_latents.proj", ("encoder", "to_latents"))

    linear(DEC + "dec_from_latents.proj", ("decoder", "from_latents"))
    m[DEC + "dec_registers_posemb_module.posembs"] = (("decoder", "register_posemb"), lambda w: np.ascontiguousarray(w[0, 0].T))
    m[DEC + "dec_nested_dropout.dropout_mask_token"] = (("decoder", "mask_token"), ident)
    m[DEC + "dec_latent_dropout.nullcond"] = (("decoder", "null_cond"), ident)
    linear(DEC + "dec_noise_patch_emb.patch_proj", ("decoder", "patch_embed"))
    linear(DEC + "dec_time_embedder.mlp.0", ("decoder", "time_embed", "fc1"))
    linear(DEC + "dec_time_embedder.mlp.2", ("decoder", "time_embed", "fc2"))
    blocks(DEC + "dec_transformer", "decoder", config.decoder.depth, adaln=True)
    linear(DEC + "dec_to_patches.adaLN_modulation.1", ("decoder", "head_adaln"))
    linear(DEC + "dec_to_patches.proj", ("decoder", "head"))
    return m


def _fixed_tables(config: FlexTokConfig) -> dict[str, np.ndarray]:
    """The official checkpoints store the sin-cos tables; we recompute them and check they agree."""
    out = {}
    for key, dim in ((ENC + "enc_posemb_module.posembs", config.encoder.dim),
                     (DEC + "dec_patches_posemb_module.posembs", config.decoder.dim)):
        out[key] = np.asarray(sincos_posemb_2d(*config.patch_grid, dim)).transpose(2, 0, 1)[None]
    return out


def params_from_official(tensors: Mapping[str, np.ndarray], model: FlexTok, source: str = "checkpoint") -> dict:
    """Official state dict -> our params pytree (numpy float32), checked key by key."""
    config = model.config
    expected = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0)))
    flat: dict[tuple[str, ...], np.ndarray] = {}
    used: set[str] = set()
    for key, (path, transform) in _key_map(config).items():
        if key not in tensors:
            raise CheckpointError(f"{source}: missing tensor {key!r} (for parameter {'/'.join(path)})")
        value = transform(np.asarray(tensors[key], np.float32))
        want = tuple(expected[path].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)} (as {tuple(value.shape)} "
                f"in our layout) but parameter {'/'.join(path)} expects {want}"
            )
        flat[path] = value
        used.add(key)
    params = traverse_util.unflatten_dict(flat)
    for key, table in _fixed_tables(config).items():
        if key not in tensors:
            raise CheckpointError(f"{source}: missing tensor {key!r}")
        got = np.asarray(tensors[key])
        if got.shape != table.shape:
            raise CheckpointError(f"{source}: tensor {key!r} has shape {got.shape}, expected {table.shape}")
        err = float(np.abs(got - table).max())
        if err > 1e-5:
            raise CheckpointError(f"{source}: sin-cos table {key!r} differs from ours by {err:.2e}")
        used.add(key)
    if config.vae is not None:
        vae_keys = {k: v for k, v in tensors.items() if k.startswith("vae.")}
        params["vae"] = vae_params_from_torch(vae_keys, config.vae, prefix="vae.vae.")
        used.update(vae_keys)
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(
            f"{source}: {len(extra)} unexpected tensor(s), e.g. {extra[0]!r} with shape {tuple(tensors[extra[0]].shape)}"
        )
    return params


def load_official_checkpoint(
    path: str | os.PathLike,
    vae_config: VAEConfig | Mapping[str, Any] | None = None,
    dtype: Any = np.float32,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[FlexTok, dict]:
    """Load an official FlexTok ``.safetensors`` checkpoint from a file or a Hugging Face hub id.

    ``path``: a file, or (when no such file exists) a hub repository id such as
    ``"EPFL-VILAB/flextok_d18_d28_dfn"`` whose ``model.safetensors`` is fetched into, or read
    from, the hub cache (``cache_dir``, default huggingface_hub's; see ``flextok_jax.hub``).
    ``vae_config``: a ``VAEConfig`` or a diffusers ``config.json``-style dict; None means the
    standard VAE of the released models. Returns (model, params) with params a plain pytree.
    """
    path = resolve_checkpoint(path, cache_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if isinstance(vae_config, Mapping):
        vae_config = VAEConfig.from_diffusers(dict(vae_config))
    meta = parse_official_metadata(read_safetensors_metadata(path))
    if not meta:
        raise CheckpointError(f"{path}: no __metadata__ in the safetensors header; is this an official FlexTok checkpoint?")
    try:
        config = config_from_official(meta, vae_config)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    model = FlexTok(config, dtype=dtype)
    params = params_from_official(load_file(path), model, source=path)
    return model, jax.tree_util.tree_map(np.asarray, params)
