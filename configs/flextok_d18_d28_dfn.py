"""FlexTok d18-d28 (encoder depth 18, decoder depth 28, width 64*depth) on DFN images (an image folder)."""
from flextok_jax.train import config as common

__doc__ = common.launch_doc(
    "flextok_d18_d28_dfn", __doc__,
    data="a folder of images (--config.data.folder), converted once to array_record in --config.data.data_dir.",
)


def get_config():
    c = common.released_recipe(encoder_depth=18, decoder_depth=28, total_steps=1_000_000)
    c.data.source = "image_folder"
    c.data.name = None
    c.data.folder = "/data/dfn"
    c.data.data_dir = "/data/dfn_array_record"
    return c
