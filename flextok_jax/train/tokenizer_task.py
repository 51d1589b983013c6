"""The FlexTok tokenizer as a training task: its loss, its batches, its pretrained weights.

loss = E || decoder(x_t, t, FSQ(encoder(z))[:keep_k]) - (noise - z) ||^2 + w_repa * REPA
       + w_sat * fsq_saturation(encoder(z)), where
z are the frozen-VAE latents, keep_k is drawn per image (nested dropout), a fraction of images
is fully replaced by the null condition (for classifier-free guidance), and t ~ logit-normal.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file

from flextok_jax import data as data_lib
from flextok_jax import flow
from flextok_jax.checkpoint_official import (
    config_from_official,
    load_official_checkpoint,
    parse_official_metadata,
    read_safetensors_metadata,
)
from flextok_jax.model.config import FlexTokConfig, from_configdict
from flextok_jax.model.flextok import FlexTok
from flextok_jax.model.fsq import fsq_saturation
from flextok_jax.model.vae import STANDARD_VAE, VAEConfig, vae_params_from_torch
from flextok_jax.evaluate.grid import grid_image
from flextok_jax.evaluate.reconstruct import reconstruct_by_k
from flextok_jax.model.flextok import token_budgets
from flextok_jax.params_io import EXPORT_FILE, save_params
from flextok_jax.parallel import gather_to_host
from flextok_jax.train.repa import RepaProjector, RepaTeacher, get_teacher, init_projector, repa_loss
from flextok_jax.train.task import ImageLogger, Metrics, Rules, Task


@dataclasses.dataclass(frozen=True)
class FlowLossHparams:
    """The static hyperparameters of the rectified-flow + REPA loss (from ``config.train``)."""

    nested_dropout: str = "pow2"
    guidance_dropout: float = 0.1
    t_mean: float = 0.0
    t_std: float = 1.0
    repa_weight: float = 0.0
    repa_hidden: int = 2048
    repa_dim: int = 0  # the teacher's feature width; 0 = no REPA
    fsq_saturation_weight: float = 0.0

    @classmethod
    def from_config(cls, train: ml_collections.ConfigDict, repa_dim: int = 0) -> "FlowLossHparams":
        if train.nested_dropout not in ("uniform", "pow2"):
            raise ValueError(f"train.nested_dropout must be 'uniform' or 'pow2', got {train.nested_dropout!r}")
        return cls(
            nested_dropout=train.nested_dropout,
            guidance_dropout=float(train.guidance_dropout),
            t_mean=float(train.t_mean),
            t_std=float(train.t_std),
            repa_weight=float(train.repa_weight) if repa_dim else 0.0,
            repa_hidden=int(train.repa_hidden),
            repa_dim=int(repa_dim),
            fsq_saturation_weight=float(train.fsq_saturation_weight),
        )


def model_parts(frozen: dict[str, Any]) -> dict[str, Any]:
    """The frozen parameters that belong to the FlexTok model (the VAE), not the REPA teacher's."""
    return {k: v for k, v in frozen.items() if k != "repa_teacher"}


def sample_keep_k(rng: jax.Array, batch: int, n: int, mode: str) -> jax.Array:
    """Per-image token budgets, int32 [B]: 'uniform' over 1..n, 'pow2' over {1, 2, 4, ...} <= n."""
    if mode == "uniform":
        return jax.random.randint(rng, (batch,), 1, n + 1, dtype=jnp.int32)
    if mode == "pow2":
        num_pow = n.bit_length()  # 2**0 .. 2**(num_pow-1) <= n
        return jnp.left_shift(1, jax.random.randint(rng, (batch,), 0, num_pow, dtype=jnp.int32))
    raise ValueError(f"nested dropout mode must be 'uniform' or 'pow2', got {mode!r}")


def flow_loss(
    model: FlexTok,
    hp: FlowLossHparams,
    teacher: RepaTeacher | None,
    params: Any,
    frozen: Any,
    images: jax.Array,
    rng: jax.Array,
) -> tuple[jax.Array, Metrics]:
    """images [B, H, W, 3] in [-1, 1] -> (scalar loss, metrics). ``params`` are differentiated;
    ``frozen`` holds the VAE and the teacher's weights (``frozen['repa_teacher']``)."""
    cfg = model.config
    b = images.shape[0]
    r_keep, r_null, r_t, r_noise, r_vae = jax.random.split(rng, 5)
    x0, z, codes = model.encode_with_fsq_inputs({**params, **model_parts(frozen)}, images, rng=r_vae)
    keep_k = sample_keep_k(r_keep, b, cfg.n_registers, hp.nested_dropout)
    null_cond = jax.random.bernoulli(r_null, hp.guidance_dropout, (b,))
    t = flow.sample_logit_normal_t(r_t, b, hp.t_mean, hp.t_std)
    noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
    x_t = flow.add_noise(x0, noise, t)

    use_repa = teacher is not None and hp.repa_weight > 0
    if use_repa:
        velocity, features = model.velocity_and_features(params, x_t, t, codes, keep_k, null_cond)
    else:
        velocity = model.velocity(params, x_t, t, codes, keep_k, null_cond)
    loss = loss_flow = jnp.mean(jnp.square(velocity - (noise - x0)))
    metrics = {}
    if use_repa:
        projected = RepaProjector(hp.repa_hidden, hp.repa_dim).apply({"params": params["repa_proj"]}, features)
        metrics["loss_repa"] = repa_loss(projected, teacher.features(frozen.get("repa_teacher"), images))
        loss = loss + hp.repa_weight * metrics["loss_repa"]
    if hp.fsq_saturation_weight > 0:
        metrics["loss_fsq_saturation"] = fsq_saturation(z, cfg.fsq_levels)
        loss = loss + hp.fsq_saturation_weight * metrics["loss_fsq_saturation"]
    return loss, {"loss": loss, "loss_flow": loss_flow, **metrics}


def _vae_config(model_section: ml_collections.ConfigDict) -> VAEConfig | None:
    vae = model_section.vae
    if vae is None:
        return None
    if vae == "standard":
        return STANDARD_VAE
    return VAEConfig(**(vae.to_dict() if hasattr(vae, "to_dict") else dict(vae)))


def pretrained_vae_scaling(path: str, prefix: str) -> float | None:
    """The latent scaling factor a pretrained VAE file declares: an official FlexTok
    checkpoint's metadata, or the ``config.json`` of a diffusers folder beside the file; None if
    the file declares none."""
    meta = read_safetensors_metadata(path)
    if meta and prefix:
        return config_from_official(parse_official_metadata(meta)).vae_scaling_factor
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(beside):
        with open(beside) as f:
            value = json.load(f).get("scaling_factor")
        return None if value is None else float(value)
    return None


class TokenizerTask(Task):
    """FlexTok stage 1. Parameters: trainable {'encoder', 'decoder'[, 'repa_proj']}, frozen {'vae'[, 'repa_teacher']}
    (or {} in pixel space). Batches: {'image': float32 [B, H, W, 3] in [-1, 1]}.

    ``train.init_from``: an official FlexTok checkpoint whose architecture replaces
    ``config.model`` (except ``repa_layer``) and whose weights (VAE included) initialise the run.
    ``train.vae_from``: pretrained VAE weights for a model built from ``config.model``; its
    declared latent scaling must equal ``model.vae_scaling_factor``.
    """

    batch_keys = ("image",)
    item_name = "images"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        t = config.train
        self._pretrained = None
        if t.init_from:
            ckpt_model, params = load_official_checkpoint(t.init_from, _vae_config(config.model))
            model_cfg: FlexTokConfig = ckpt_model.config.replace(repa_layer=config.model.repa_layer)
            self._pretrained = params
        else:
            model_cfg = from_configdict(config.model)
        if t.vae_from:
            if model_cfg.vae is None:
                raise ValueError("train.vae_from is set but the model is pixel-space (model.vae=None)")
            declared = pretrained_vae_scaling(t.vae_from, t.vae_prefix)
            if declared is None:
                warnings.warn(f"{t.vae_from} declares no latent scaling factor; using the configured "
                              f"model.vae_scaling_factor={model_cfg.vae_scaling_factor} unchecked")
            elif not np.isclose(declared, model_cfg.vae_scaling_factor, rtol=1e-6):
                raise ValueError(
                    f"model.vae_scaling_factor={model_cfg.vae_scaling_factor} but the VAE in {t.vae_from} "
                    f"declares {declared}; set --config.model.vae_scaling_factor={declared}"
                )
            vae = vae_params_from_torch(load_file(t.vae_from), model_cfg.vae, prefix=t.vae_prefix)
            self._pretrained = {**(self._pretrained or {}), "vae": jax.tree.map(np.asarray, vae)}
        self.model = FlexTok(model_cfg, dtype=jnp.dtype(config.dtype))

        self.teacher, repa_dim = None, 0
        if t.repa_teacher and t.repa_weight > 0:
            if model_cfg.repa_layer is None:
                raise ValueError("train.repa_teacher is set but model.repa_layer is None")
            self.teacher = get_teacher(t.repa_teacher, model_cfg, t.repa_teacher_weights)
            repa_dim = self.teacher.dim
        self.hp = FlowLossHparams.from_config(t, repa_dim)
        self.skips = data_lib.SkipCounter()

    def init_boxed(self, rng: jax.Array) -> tuple[Any, Any]:
        r_model, r_proj = jax.random.split(rng)
        p = self.model.init_boxed(r_model)
        trainable = {"encoder": p["encoder"], "decoder": p["decoder"]}
        if self.hp.repa_dim:
            trainable["repa_proj"] = init_projector(
                r_proj, self.model.config.decoder.dim, self.hp.repa_hidden, self.hp.repa_dim
            )
        frozen = {"vae": p["vae"]} if "vae" in p else {}
        if self.teacher is not None and self.teacher.init_boxed is not None:
            frozen["repa_teacher"] = self.teacher.init_boxed(jax.random.fold_in(rng, 2))
        return trainable, frozen

    def pretrained(self) -> dict[str, Any] | None:
        if self.teacher is None or self.teacher.weights is None:
            return self._pretrained
        return {**(self._pretrained or {}), "repa_teacher": self.teacher.weights()}

    def loss(self, params: Any, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        return flow_loss(self.model, self.hp, self.teacher, params, frozen, batch["image"], rng)

    def dataset(self, source: Any = None):
        d = self.config.data
        return data_lib.make_dataset(
            data_lib.get_source(d) if source is None else source,
            image_size=int(d.image_size), global_batch_size=int(self.config.train.global_batch_size),
            seed=int(d.seed), shuffle=True, num_epochs=None, worker_count=int(d.worker_count),
            random_crop=bool(d.random_crop), flip=bool(d.flip), skip_counter=self.skips,
        )

    def skipped_records(self) -> int:
        return self.skips.count

    def metadata(self) -> dict[str, Any]:
        return {"model_config": self.model.config.to_dict()}

    def export(self, directory: str, ema_params: Any, frozen: Any) -> str:
        """EMA encoder + decoder (+ the frozen VAE) with the config: ``directory/flextok.safetensors``."""
        host = gather_to_host({"encoder": ema_params["encoder"], "decoder": ema_params["decoder"], **model_parts(frozen)})
        target = os.path.join(directory, EXPORT_FILE)
        if jax.process_index() == 0:
            os.makedirs(directory, exist_ok=True)
            save_params(target, host, self.model.config)
        return target

    def image_logger(self, mesh: Mesh, rules: Rules, first_batch: dict[str, jax.Array]) -> ImageLogger | None:
        log = self.config.log
        if not log.grid_every_steps:
            return None
        return ReconstructionGrid(
            self.model, mesh, rules, first_batch["image"], int(log.grid_images), int(log.grid_sample_steps),
            int(log.grid_every_steps),
        )


class ReconstructionGrid:
    """Every ``every`` steps, a picture of the first ``num_images`` images of the first training
    batch (kept replicated for the whole run) and their reconstructions from the first
    k = 1, 2, 4, ... tokens with the current parameters (no guidance, the same noise for every k)."""

    def __init__(self, model: FlexTok, mesh: Mesh, rules: Rules, images: jax.Array, num_images: int,
                 num_steps: int, every: int):
        self.model, self.mesh, self.rules = model, mesh, rules
        self.num_steps, self.every = num_steps, every
        self.ks = token_budgets(model.config.n_registers)
        self.images = jax.jit(lambda x: x[:num_images], out_shardings=NamedSharding(mesh, P()))(images)

    def __call__(self, state: Any, step: int) -> np.ndarray | None:
        if step % self.every:
            return None
        params = {**state.params, **model_parts(state.frozen)}
        recon = reconstruct_by_k(self.model, params, self.images, self.ks, self.num_steps, seed=step,
                                 mesh=self.mesh, rules=self.rules)
        return grid_image(np.concatenate([np.asarray(self.images)[None], recon]))
