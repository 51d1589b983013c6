"""FlexTok d18-d28 (encoder depth 18, decoder depth 28, width 64*depth) on DFN images (an image folder).

Launch (one host; multi-host: the same command on every host, with JAX's distributed env vars set):

    python -m flextok_jax.main --config configs/flextok_d18_d28_dfn.py --workdir /ckpt/flextok_d18_d28_dfn \
        --config.train.vae_from=/weights/flextok_vae.safetensors

Data: a folder of images (--config.data.folder), converted once to array_record in --config.data.data_dir.
Expect: a loss around 1 at step 0 that drops quickly, metrics in WORKDIR/metrics.jsonl and
TensorBoard in WORKDIR/tb, a reconstruction grid PNG (originals, then k = 1, 2, 4, ... 256 tokens)
every log.grid_every_steps, checkpoints in WORKDIR/checkpoints every checkpoint.every_steps.
Resuming is automatic: run the same command again.
"""
from configs import common


def get_config():
    c = common.released_recipe(encoder_depth=18, decoder_depth=28, total_steps=1_000_000)
    c.data.source = "image_folder"
    c.data.name = None
    c.data.folder = "/data/dfn"
    c.data.data_dir = "/data/dfn_array_record"
    return c
