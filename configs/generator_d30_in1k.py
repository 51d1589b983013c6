"""FlexTok AR generator d30 (depth 30, width 1920, 30 heads; about 1.33B non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.generator_launch_doc("generator_d30_in1k", __doc__)


def get_config():
    return common.generator_recipe(depth=30)
