"""FlexTok AR generator d12 (depth 12, width 768, 12 heads; about 85M non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.launch_doc(
    "generator_d12_in1k", __doc__,
    data="a token dataset of imagenet2012 (--config.data.tokens=DIR, written by `flextok tokenize-dataset`).",
    expect="next-token loss falling from ln(64000) = 11.1, loss per position band in metrics.jsonl,\n"
           "checkpoints every checkpoint.every_steps; the EMA weights in WORKDIR/export/generator.safetensors.",
    extra_flags=" \\\n        --config.data.tokens=/data/imagenet_tokens",
)


def get_config():
    return common.generator_recipe(depth=12)
