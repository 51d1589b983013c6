"""flextok_jax: FlexTok (images <-> ordered sequences of 1..256 discrete tokens) in JAX/Flax."""
from flextok_jax.checkpoint_official import load_official_checkpoint
from flextok_jax.model.config import FlexTokConfig, TransformerConfig
from flextok_jax.model.flextok import FlexTok
from flextok_jax.model.vae import STANDARD_VAE, VAEConfig
from flextok_jax.params_io import load_model, load_params, save_params

__all__ = [
    "FlexTok",
    "FlexTokConfig",
    "TransformerConfig",
    "VAEConfig",
    "STANDARD_VAE",
    "load_official_checkpoint",
    "load_model",
    "load_params",
    "save_params",
]
