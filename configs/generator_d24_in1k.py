"""FlexTok AR generator d24 (depth 24, width 1536, 24 heads; about 679M non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.generator_launch_doc("generator_d24_in1k", __doc__)


def get_config():
    return common.generator_recipe(depth=24)
