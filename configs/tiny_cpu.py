"""A pixel-space FlexTok small enough to train on a 2-core CPU in minutes.

Launch:

    python -m flextok_jax.main --config configs/tiny_cpu.py --workdir /tmp/flextok_tiny

Expect: 32x32 procedural pictures, ~0.3M parameters, about 15 steps/s on 2 CPU cores, so the
3000 steps take about 3.5 minutes. The flow loss starts near 1.1 and falls to about 0.1; a
reconstruction grid (originals, then k = 1, 2, 4, 8, 16 tokens) lands in WORKDIR/grids every
log.grid_every_steps. At the end, 8 held-out pictures are reconstructed from their first k tokens
(WORKDIR/reconstructions.png, WORKDIR/loss_curve.png) and the error per k is printed; measured
(3.0 min in all): MSE 0.179 (k=1), 0.154 (2), 0.110 (4), 0.101 (8), 0.095 (16).
Rerunning the command resumes from WORKDIR/checkpoints.
"""
from flextok_jax.train import config as common


def get_config():
    c = common.base_config()
    c.model = common.tiny_tokenizer_model()
    c.data.source = "fashion_mnist"
    c.data.image_size = 32
    c.data.random_crop = False
    c.data.flip = True
    c.train.global_batch_size = 32
    c.train.total_steps = 2_000
    c.train.nested_dropout = "pow2"
    # High-noise times are where the decoder must read the tokens: with the default logit-normal
    # (0, 1) it learns to ignore them on Fashion-MNIST (flow loss with 16 tokens = without any).
    c.train.t_mean = 1.0
    c.train.t_std = 1.5
    c.train.repa_hidden = 64
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.0
    c.optimizer.ema_decay = 0.99
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 2
    c.log.every_steps = 10
    c.log.grid_every_steps = 1_000
    c.log.grid_sample_steps = 10

    # Stage 2: a class-conditional generator over the tokenizer's 16 ids per image.
    g = common.generator_base_config(common.generator_model(
        depth=4, num_classes=10, vocab_size=1000, max_tokens=16, dim=128, num_heads=2, head_dim=64))
    g.train.global_batch_size = 64
    g.train.total_steps = 800
    g.optimizer.lr = 1e-3
    g.optimizer.warmup_steps = 100
    g.optimizer.ema_decay = 0.99
    g.checkpoint.every_steps = 500
    g.checkpoint.keep = 2
    g.log.every_steps = 50
    c.stage2 = common.stage2_defaults(g)
    c.stage2.enabled = True
    c.stage2.classifier_steps = 1_400
    return c
