"""FlexTok AR generator d12 (depth 12, width 768, 12 heads; about 85M non-embedding parameters), class-conditional on ImageNet-1k token ids."""
from flextok_jax.train import config as common

__doc__ = common.generator_launch_doc("generator_d12_in1k", __doc__)


def get_config():
    return common.generator_recipe(depth=12)
