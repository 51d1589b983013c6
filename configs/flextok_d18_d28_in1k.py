"""FlexTok d18-d28 (encoder depth 18, decoder depth 28, width 64*depth) on ImageNet-1k 256 px (tfds imagenet2012).

Launch (one host; multi-host: the same command on every host, with JAX's distributed env vars set):

    python -m flextok_jax.main --config configs/flextok_d18_d28_in1k.py --workdir /ckpt/flextok_d18_d28_in1k \
        --config.train.vae_from=/weights/flextok_vae.safetensors

Data: a prepared tfds `imagenet2012` in array_record format (pass --config.data.data_dir=...).
Expect: a loss around 1 at step 0 that drops quickly, metrics in WORKDIR/metrics.jsonl and
TensorBoard in WORKDIR/tb, a reconstruction grid PNG (originals, then k = 1, 2, 4, ... 256 tokens)
every log.grid_every_steps, checkpoints in WORKDIR/checkpoints every checkpoint.every_steps.
Resuming is automatic: run the same command again.
"""
from configs import common


def get_config():
    return common.released_recipe(encoder_depth=18, decoder_depth=28)
