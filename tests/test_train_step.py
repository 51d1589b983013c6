"""The train step: identical on every mesh, nested-dropout budgets, the loss falls, FSQ kept unsaturated."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from helpers import losses, small_config

from flextok_jax import load_model, parallel
from flextok_jax.model.flextok import token_budgets
from flextok_jax.model.fsq import fsq_bound, fsq_saturation
from flextok_jax.train import TrainSetup, make_train_step, sample_keep_k, train
from flextok_jax.train.tokenizer_task import flow_loss


def _one_step(config, mesh_shape, images):
    config.mesh.shape = mesh_shape
    n = int(np.prod(mesh_shape))
    setup = TrainSetup.from_config(config, devices=jax.devices()[:n])
    state, metrics = setup.run_step(setup.init_state(), {"image": images})  # the loop's own step
    return jax.tree.map(np.asarray, state.params), {k: float(v) for k, v in metrics.items()}


def test_train_step_same_on_every_mesh():
    # REPA on, so the projector and teacher path are checked under sharding too.
    config = small_config(repa_teacher="pixel_patches", repa_weight=0.5)
    config.optimizer.warmup_steps = 0
    # With eps=1e-8 Adam's first step is lr * sign(g) even where g is a rounding-level residue of
    # cancelling terms (|g| ~ 1e-9, relative error ~1e-2 between meshes), so comparing parameters
    # would compare rounding noise. eps=1e-6 keeps such entries' updates negligible.
    config.optimizer.eps = 1e-6
    images = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    ref_params, ref_metrics = _one_step(config, (1, 1, 1), images)
    assert "loss_repa" in ref_metrics and np.isfinite(ref_metrics["loss"])
    for shape in [(8, 1, 1), (2, 2, 2), (2, 1, 4)]:
        params, metrics = _one_step(config, shape, images)
        for k in ("loss", "loss_flow", "loss_repa", "grad_norm"):
            np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, err_msg=f"{k} on mesh {shape}")
        for path, a, b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(params),
                              jax.tree.leaves(ref_params)):
            # 1e-5 of each leaf's scale, plus 1e-3 of one update (zero-initialised leaves hold
            # nothing but the update, whose gradient carries the meshes' rounding differences;
            # measured up to 2e-4 of an update, one adaLN entry of the width-128 tiny model).
            atol = 1e-5 * float(np.max(np.abs(b))) + 1e-3 * config.optimizer.lr
            np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"{path[0]} on mesh {shape}")


@pytest.mark.parametrize("n", [16, 256, 12])
def test_nested_dropout_budgets(n):
    k_uniform = np.asarray(sample_keep_k(jax.random.key(0), 4096, n, "uniform"))
    assert k_uniform.min() == 1 and k_uniform.max() == n
    k_pow2 = np.asarray(sample_keep_k(jax.random.key(1), 4096, n, "pow2"))
    assert set(k_pow2.tolist()) == {k for k in token_budgets(n) if k & (k - 1) == 0}
    with pytest.raises(ValueError):
        sample_keep_k(jax.random.key(0), 4, n, "linear")


def test_loss_falls_and_writes_grid(tmp_path):
    config = small_config(total_steps=60)
    config.optimizer.warmup_steps = 10
    config.checkpoint.every_steps = 60
    config.log.grid_every_steps = 60
    config.log.grid_sample_steps = 2
    result = train(config, tmp_path)
    loss = losses(tmp_path)
    first, last = np.mean([loss[s] for s in range(1, 6)]), np.mean([loss[s] for s in range(56, 61)])
    assert last < 0.75 * first, (first, last)
    assert result["step"] == 60 and not result["preempted"]
    # The grid: 4 training images (rows), then the original and k = 1, 2, 4, 8, 16 (columns).
    grid = np.asarray(Image.open(tmp_path / "grids" / "step_00000060.png"))
    assert grid.shape == (4 * 32, 6 * 32, 3)
    cells = grid.reshape(4, 32, 6, 32, 3).astype(np.float32)
    # The reconstructions are pictures, not a copy of the originals and not blank.
    assert all(cells[:, :, c].std() > 5 for c in range(6))
    assert np.abs(cells[:, :, 1] - cells[:, :, 0]).mean() > 1
    # Training to total_steps exports the EMA weights for tokenize / detokenize.
    model, params = load_model(tmp_path / "export" / "flextok.safetensors")
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    tokens = model.tokenize(params, images)
    assert tokens.shape == (2, 16)
    assert model.detokenize(params, tokens, keep_k=4, num_steps=2).shape == (2, 32, 32, 3)


def test_train_step_keeps_the_models_sharding_constraints():
    """The setup's step traces with the mesh and rules in effect wherever it is first called, so
    the model's nn.with_logical_constraint annotations reach the compiled program."""
    config = small_config()
    config.mesh.shape = (2, 2, 2)
    setup = TrainSetup.from_config(config)
    state = setup.init_state()
    host = {"image": np.zeros((8, 32, 32, 3), np.float32)}
    hlo = setup.step.lower(state, setup.global_batch(host)).as_text()  # outside any mesh / rules context
    constraints = hlo.count("sharding_constraint")
    assert constraints >= 2 * config.model.decoder.depth, constraints
    # Without the rules at trace time the same step loses them (what the loop used to compile).
    bare = jax.jit(make_train_step(setup.task.loss, setup.tx, 0.99, setup.schedule))
    images = {"image": jax.device_put(host["image"], parallel.batch_sharding(setup.mesh))}
    with jax.set_mesh(setup.mesh):
        assert bare.lower(state, images).as_text().count("sharding_constraint") == 0


def _fsq_shift(levels):
    """The parity README's FSQ shift atanh(offset / half), in float64."""
    lv = np.asarray(levels, np.float64)
    half = (lv - 1) * 1.001 / 2
    return np.arctanh(np.where(lv % 2 == 0, 0.5, 0.0) / half)


def test_fsq_saturation_is_the_squared_excess_past_the_margin():
    levels = (8, 5, 5, 5)
    z = np.random.default_rng(0).normal(0, 3, (64, 16, 4))
    want = np.mean(np.maximum(np.abs(z + _fsq_shift(levels)) - 2.0, 0) ** 2)
    np.testing.assert_allclose(float(fsq_saturation(jnp.asarray(z, jnp.float32), levels)), want, rtol=1e-5)
    # Inside the margin (|z + shift| <= 1.8 + 0.143) nothing is penalised.
    assert float(fsq_saturation(jnp.asarray(np.clip(z, -1.8, 1.8), jnp.float32), levels)) == 0.0
    # A dead dimension gets no gradient through FSQ but one from the penalty, towards the middle.
    dead = jnp.array([[-6.0, 6.0, 0.5, -0.5]])
    through_fsq = jax.grad(lambda v: jnp.sum(fsq_bound(v, levels)))(dead)
    assert float(jnp.max(jnp.abs(through_fsq[0, :2]))) < 1e-3
    g = np.asarray(jax.grad(lambda v: fsq_saturation(v, levels))(dead))[0]
    assert g[0] < -1.0 and g[1] > 1.0 and g[2] == 0.0 and g[3] == 0.0


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_flow_loss_adds_the_fsq_saturation_term(weight):
    config = small_config(fsq_saturation_weight=weight)
    setup = TrainSetup.from_config(config, devices=jax.devices()[:1])
    task = setup.task
    params = jax.tree.map(np.asarray, setup.init_state().params)
    # Scale the FSQ head so that most dimensions sit in tanh's flat tails.
    params["encoder"]["to_latents"]["kernel"] = params["encoder"]["to_latents"]["kernel"] * 40.0
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)), jnp.float32)
    loss, metrics = flow_loss(task.model, task.hp, None, params, {}, images, jax.random.key(0))
    z = task.model.encode_registers(params, images)
    if weight == 0:
        assert "loss_fsq_saturation" not in metrics and float(loss) == float(metrics["loss_flow"])
        return
    sat = float(fsq_saturation(z, config.model.fsq_levels))
    assert sat > 1.0
    np.testing.assert_allclose(float(metrics["loss_fsq_saturation"]), sat, rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(metrics["loss_flow"]) + weight * sat, rtol=1e-6)
