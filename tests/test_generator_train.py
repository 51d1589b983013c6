"""Generator training through the one training system: the same on every mesh, exact
kill-and-resume, and a loss that falls on a token dataset written by `flextok tokenize-dataset`."""
from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest
from helpers import VOCAB, generator_config, losses, write_procedural_token_dataset

from flextok_jax import generator
from flextok_jax.train import TrainSetup, train
from flextok_jax.train.generator_task import EXPORT_FILE

@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    return write_procedural_token_dataset(tmp_path_factory.mktemp("gen_tokens"))


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
