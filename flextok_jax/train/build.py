"""Everything a config describes besides the loop: model, pretrained weights, REPA teacher, loss."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors.numpy import load_file

from flextok_jax.checkpoint_official import load_official_checkpoint
from flextok_jax.model.config import FlexTokConfig, from_configdict
from flextok_jax.model.flextok import FlexTok
from flextok_jax.model.vae import STANDARD_VAE, VAEConfig, vae_params_from_torch
from flextok_jax.train.repa import Teacher, get_teacher
from flextok_jax.train.step import LossConfig


@dataclasses.dataclass
class Setup:
    """model; init_params: host arrays replacing parts of the random init (or None); teacher;
    hp: the loss hyperparameters."""

    model: FlexTok
    init_params: dict[str, Any] | None
    teacher: Teacher | None
    hp: LossConfig


def _vae_config(model_section: ml_collections.ConfigDict) -> VAEConfig | None:
    vae = model_section.get("vae")
    if vae is None:
        return None
    if vae == "standard":
        return STANDARD_VAE
    return VAEConfig(**(vae.to_dict() if hasattr(vae, "to_dict") else dict(vae)))


def build(config: ml_collections.ConfigDict) -> Setup:
    """Model and pretrained weights from ``config``.

    ``train.init_from``: an official FlexTok checkpoint whose architecture replaces
    ``config.model`` (except ``repa_layer``) and whose weights (VAE included) initialise the run.
    ``train.vae_from``: pretrained VAE weights for a model built from ``config.model``.
    """
    dtype = jnp.dtype(config.get("dtype", "float32"))
    init_params = None
    if config.train.get("init_from"):
        ckpt_model, params = load_official_checkpoint(config.train.init_from, _vae_config(config.model))
        model_cfg: FlexTokConfig = ckpt_model.config.replace(repa_layer=config.model.get("repa_layer"))
        init_params = params
    else:
        model_cfg = from_configdict(config.model)
    if config.train.get("vae_from"):
        if model_cfg.vae is None:
            raise ValueError("train.vae_from is set but the model is pixel-space (model.vae=None)")
        tensors = load_file(config.train.vae_from)
        vae = vae_params_from_torch(tensors, model_cfg.vae, prefix=config.train.get("vae_prefix", ""))
        init_params = {**(init_params or {}), "vae": jax.tree.map(np.asarray, vae)}
    model = FlexTok(model_cfg, dtype=dtype)

    teacher, repa_dim = None, 0
    name = config.train.get("repa_teacher")
    if name and config.train.repa_weight > 0:
        if model_cfg.repa_layer is None:
            raise ValueError("train.repa_teacher is set but model.repa_layer is None")
        teacher, repa_dim = get_teacher(name, model_cfg)
    return Setup(model, init_params, teacher, LossConfig.from_config(config, repa_dim))

