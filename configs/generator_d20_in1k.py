"""FlexTok AR generator d20 (depth 20, width 1280, 20 heads; about 393M non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.generator_launch_doc("generator_d20_in1k", __doc__)


def get_config():
    return common.generator_recipe(depth=20)
