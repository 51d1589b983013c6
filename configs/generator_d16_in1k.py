"""FlexTok AR generator d16 (depth 16, width 1024, 16 heads; about 201M non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.generator_launch_doc("generator_d16_in1k", __doc__)


def get_config():
    return common.generator_recipe(depth=16)
