"""Generator training through the one training system: the same on every mesh, exact
kill-and-resume, and a loss that falls on a token dataset written by `flextok tokenize-dataset`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, losses

from flextok_jax import FlexTok, FlexTokConfig, TransformerConfig, generator, save_params
from flextok_jax.train import TrainSetup, train
from flextok_jax.train import config as common
from flextok_jax.train.generator_task import EXPORT_FILE

VOCAB = 8 * 5 * 5  # FSQ (8, 5, 5): 200 ids
N_TOKENS = 8


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    """A token dataset written by the command line: 96 procedural 32 px images and their flips,
    tokenized by a random tiny tokenizer (8 registers, 200 ids)."""
    root = tmp_path_factory.mktemp("gen_tokens")
    cfg = FlexTokConfig(
        encoder=TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0),
        decoder=TransformerConfig(dim=32, depth=1, head_dim=16, mlp_ratio=2.0),
        n_registers=N_TOKENS, fsq_levels=(8, 5, 5), latent_channels=3, patch_size=(8, 8), patch_grid=(4, 4),
        vae=None, vae_scaling_factor=1.0, vae_shift_factor=0.0)
    model = FlexTok(cfg)
    ckpt = root / "tokenizer.safetensors"
    save_params(ckpt, model.init(jax.random.key(0)), cfg)
    out = root / "tokens"
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.cli", "tokenize-dataset", "--checkpoint", str(ckpt),
         "--source", "procedural", "--num_images", "96", "--image_size", "32", "--out", str(out),
         "--augment", "flip", "--batch_size", "32", "--records_per_shard", "64"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["records_written"] == 192
    return str(out)


def generator_config(token_dir: str, **train) -> "ml_collections.ConfigDict":  # noqa: F821
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


def _two_steps(config, mesh_shape):
    config.mesh.shape = mesh_shape
    setup = TrainSetup.from_config(config, devices=jax.devices()[: int(np.prod(mesh_shape))])
    batches = iter(setup.task.dataset())
    state = setup.init_state()
    history = []
    for _ in range(2):
        state, metrics = setup.run_step(state, next(batches))
        history.append({k: float(v) for k, v in metrics.items()})
    return jax.tree.map(np.asarray, state.params), history


def test_generator_step_same_on_every_mesh(token_dir):
    config = generator_config(token_dir)
    config.optimizer.warmup_steps = 0
    config.optimizer.eps = 1e-6  # see test_train_step: Adam's sign-like first step magnifies rounding
    ref_params, ref_metrics = _two_steps(config, (1, 1, 1))
    assert np.isfinite(ref_metrics[-1]["loss"]) and "accuracy" in ref_metrics[-1]
    lr = config.optimizer.lr
    for shape in [(8, 1, 1), (2, 2, 2), (2, 1, 4)]:
        params, metrics = _two_steps(config, shape)
        for step, (got, want) in enumerate(zip(metrics, ref_metrics)):
            for k in ("loss", "accuracy", "grad_norm"):
                np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=f"{k} step {step} mesh {shape}")
        for path, a, b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(params),
                              jax.tree.leaves(ref_params)):
            # The head's rows of ids a batch barely holds get Adam's normalised update of a
            # rounding-level gradient; 1e-2 of one update bounds that (measured 1.5e-3).
            atol = 1e-5 * float(np.max(np.abs(b))) + 1e-2 * lr
            np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"{path[0]} on mesh {shape}")


def test_generator_kill_and_resume_is_exact(token_dir, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(generator_config(token_dir), whole)
    first = train(generator_config(token_dir, stop_at_step=4), parts)
    assert first["step"] == 4
    train(generator_config(token_dir), parts)
    want, got = losses(whole), losses(parts)
    assert sorted(got) == sorted(want) == list(range(1, 11))
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(want)])
    _, p_whole = generator.load_generator(os.path.join(whole, "export", EXPORT_FILE))
    _, p_parts = generator.load_generator(os.path.join(parts, "export", EXPORT_FILE))
    jax.tree.map(np.testing.assert_array_equal, p_parts, p_whole)


def test_generator_loss_falls_on_the_written_tokens(token_dir, tmp_path):
    config = generator_config(token_dir, total_steps=80)
    config.optimizer.warmup_steps = 5
    config.checkpoint.every_steps = 80
    train(config, tmp_path)
    got = losses(tmp_path)
    # Starts at ln(200) = 5.3 (zero-initialised head); the 192 records are learnable by heart.
    assert abs(got[1] - math.log(VOCAB)) < 0.05, got[1]
    last = np.mean([got[s] for s in range(71, 81)])
    print(f"generator loss {got[1]:.3f} -> {last:.3f}")
    assert last < 0.8 * math.log(VOCAB), last
