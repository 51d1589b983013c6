"""Helpers shared by the tests (one module; test files do not import from each other)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from flextok_jax.model.vae import VAEConfig
from flextok_jax.train import config as common

REPO = pathlib.Path(__file__).resolve().parents[1]
# configs/ is a top-level folder of the repo, not an installed package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from configs import tiny_cpu  # noqa: E402



def max_err(a, b) -> float:
    """Largest absolute difference, computed in float64."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def nhwc(x) -> np.ndarray:
    """[B, C, H, W] (the fixtures' torch layout) -> [B, H, W, C]."""
    return np.asarray(x).transpose(0, 2, 3, 1)


def nchw(x) -> np.ndarray:
    """[B, H, W, C] -> [B, C, H, W]."""
    return np.asarray(x).transpose(0, 3, 1, 2)


def fixture_vae_config(io) -> VAEConfig:
    """The VAE architecture of the tiny parity checkpoint (not recorded in its metadata)."""
    return VAEConfig(
        block_out_channels=tuple(int(c) for c in io["vae_cfg_block_out_channels"]),
        layers_per_block=int(io["vae_cfg_layers_per_block"]),
        norm_num_groups=int(io["vae_cfg_norm_num_groups"]),
        mid_block_add_attention=bool(io["vae_cfg_mid_block_add_attention"]),
        latent_channels=16,
    )


# The small run every checkpoint test compares against: tiny_cpu with logging every step, no grids
# or progress bar, sync checkpoints. One table, so the in-process runs and the command-line run
# (the SIGTERM test) cannot drift apart.
SMALL_OVERRIDES = {
    "train.total_steps": 12,
    "train.global_batch_size": 16,
    "optimizer.warmup_steps": 2,
    "log.every_steps": 1,
    "log.grid_every_steps": 0,
    "log.progress": False,
    "checkpoint.every_steps": 3,
    "checkpoint.keep": 10,
}


def small_config(**train_overrides) -> ml_collections.ConfigDict:
    """tiny_cpu with SMALL_OVERRIDES; keyword arguments override fields of `config.train`."""
    c = tiny_cpu.get_config()
    for dotted, value in SMALL_OVERRIDES.items():
        section, field = dotted.split(".")
        c[section][field] = value
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


def small_config_flags(**overrides) -> list[str]:
    """SMALL_OVERRIDES (updated by `overrides`, dotted keys) as `--config.a.b=v` command-line flags."""
    table = {**SMALL_OVERRIDES, **overrides}
    return [f"--config.{k}={v}" for k, v in table.items()]


def losses(workdir: str | os.PathLike) -> dict[int, float]:
    """step -> loss from WORKDIR/metrics.jsonl (a later line for a step wins)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["loss"]
    return out


# The token dataset of the generator-training tests: FSQ (8, 5, 5) = 200 ids, 8 tokens per image.
VOCAB = 8 * 5 * 5
N_TOKENS = 8


def write_procedural_token_dataset(root: pathlib.Path) -> str:
    """ROOT/tokens written by the command line (`flextok tokenize-dataset`): 96 procedural 32 px
    images and their flips (192 records), tokenized by a random tiny tokenizer (N_TOKENS
    registers, VOCAB ids). Returns the folder."""
    from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, save_params

    cfg = FlexTokConfig(
        encoder=TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0),
        decoder=TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0),
        n_registers=N_TOKENS, fsq_levels=(8, 5, 5), latent_channels=3, patch_size=(8, 8), patch_grid=(4, 4),
        vae=None, vae_scaling_factor=1.0, vae_shift_factor=0.0)
    ckpt = root / "tokenizer.safetensors"
    save_params(ckpt, FlexTok(cfg).init(jax.random.key(0)), cfg)
    out = root / "tokens"
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.cli", "tokenize-dataset", "--checkpoint", str(ckpt),
         "--source", "procedural", "--num_images", "96", "--image_size", "32", "--out", str(out),
         "--augment", "flip", "--batch_size", "32", "--records_per_shard", "64"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["records_written"] == 192
    return str(out)


def generator_config(token_dir: str, **train) -> ml_collections.ConfigDict:
    """A tiny generator run over `token_dir`: depth 2, width 64, logging every step."""
    c = common.generator_base_config(common.generator_model(
        depth=2, num_classes=10, vocab_size=VOCAB, max_tokens=N_TOKENS, dim=64, num_heads=2, head_dim=32))
    c.data.tokens = token_dir
    c.train.global_batch_size = 16
    c.train.total_steps = 10
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.log.every_steps = 1
    c.log.grid_every_steps = 0
    c.log.progress = False
    c.checkpoint.every_steps = 4
    c.checkpoint.keep = 10
    c.checkpoint["async"] = False
    for k, v in train.items():
        c.train[k] = v
    return c


def random_pixel_tokenizer_and_folder(root: pathlib.Path, num_images: int, params_seed: int, image_seed: int):
    """A small pixel-space tokenizer (16 px, 16 registers) with random parameters saved to
    ROOT/tok.safetensors, and ROOT/images: ``num_images`` flat 16 px pictures, every other one
    with stripes. Returns (checkpoint, folder, model, params, images [num_images, 16, 16, 3] as
    ``cli.load_images`` reads them)."""
    from PIL import Image

    from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, cli, save_params
    from flextok_jax.benchmarks.models import random_params

    t = TransformerConfig(dim=64, depth=2, head_dim=32)
    cfg = FlexTokConfig(encoder=t, decoder=t, n_registers=16, latent_channels=3, patch_size=(4, 4),
                        patch_grid=(4, 4), vae=None)
    model = FlexTok(cfg)
    params = random_params(model, seed=params_seed)
    ckpt = root / "tok.safetensors"
    save_params(ckpt, params, cfg)
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(image_seed)
    for i in range(num_images):
        px = np.zeros((16, 16, 3), np.uint8) + rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
        if i % 2:  # stripes on every other picture
            px[:, :: 1 + i // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(px).save(folder / f"im{i}.png")
    images = np.stack([im for _, im in cli.load_images(cli.list_images(folder), 16)])
    return ckpt, folder, model, params, images
