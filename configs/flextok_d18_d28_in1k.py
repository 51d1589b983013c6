"""FlexTok d18-d28 (encoder depth 18, decoder depth 28, width 64*depth) on ImageNet-1k 256 px (tfds imagenet2012)."""
from flextok_jax.train import config as common

__doc__ = common.launch_doc(
    "flextok_d18_d28_in1k", __doc__, data="a prepared tfds `imagenet2012` in array_record format (pass --config.data.data_dir=...)."
)


def get_config():
    return common.released_recipe(encoder_depth=18, decoder_depth=28)
