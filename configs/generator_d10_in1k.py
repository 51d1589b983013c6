"""FlexTok AR generator d10 (depth 10, width 640, 10 heads; about 49M non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.generator_launch_doc("generator_d10_in1k", __doc__)


def get_config():
    return common.generator_recipe(depth=10)
