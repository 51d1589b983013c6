"""Checkpoints: exact resume (in-process and after SIGTERM), mesh change, NaN stop, skips, fine-tune."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, losses, small_config, small_config_flags

from flextok_jax import load_model
from flextok_jax.checkpoint_official import load_official_checkpoint
from flextok_jax.data import ProceduralImageSource
from flextok_jax.train import Checkpointer, NoRestorableCheckpointError, TrainingDivergedError, TrainSetup, train


def _restore(config, workdir, step=None):
    setup = TrainSetup.from_config(config)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return ckpt.restore(setup.abstract_state, step)
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run: (workdir, per-step losses, final params)."""
    workdir = tmp_path_factory.mktemp("reference")
    config = small_config()
    train(config, workdir)
    state, _, _ = _restore(config, workdir)
    return workdir, losses(workdir), jax.tree.map(np.asarray, state.params)


def _assert_same_run(workdir, reference, rtol=0.0):
    _, ref_losses, ref_params = reference
    got = losses(workdir)
    assert sorted(got) == sorted(ref_losses)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref_losses[s] for s in sorted(got)], rtol=rtol)
    state, _, _ = _restore(small_config(), workdir)
    params = jax.tree.map(np.asarray, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3), params, ref_params)


def test_resume_is_exact(tmp_path, reference):
    first = train(small_config(stop_at_step=5), tmp_path)
    # stop_at_step saves at the stopping step even between checkpoint intervals.
    assert first["step"] == 5
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [3, 5]
    _, data_state, meta = _restore(small_config(), tmp_path, 5)
    assert meta["step"] == 5 and data_state is not None
    train(small_config(), tmp_path)
    _assert_same_run(tmp_path, reference)


def test_resume_onto_another_mesh(tmp_path, reference):
    config = small_config(stop_at_step=6)
    config.mesh.shape = (8, 1, 1)
    train(config, tmp_path)
    config = small_config()
    config.mesh.shape = (2, 2, 2)
    train(config, tmp_path)
    _assert_same_run(tmp_path, reference, rtol=2e-5)


def test_sigterm_saves_and_resumes(tmp_path, reference):
    args = [sys.executable, "-m", "flextok_jax.main", "--config", "configs/tiny_cpu.py", "--workdir", str(tmp_path),
            *small_config_flags(**{"checkpoint.every_steps": 100})]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    saved = Checkpointer(tmp_path / "checkpoints").all_steps()
    assert len(saved) == 1 and 2 <= saved[0] < 12, (saved, out)
    assert "'preempted': True" in out
    train(small_config(), tmp_path)
    _assert_same_run(tmp_path, reference)


def _corrupt_data_files(step_dir):
    """Overwrite every array data file of a checkpoint (a disk or network-filesystem fault)."""
    hit = 0
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and path.suffix != ".json" and "_METADATA" not in path.name:
            path.write_bytes(b"\0garbage" * 64)
            hit += 1
    assert hit, f"no data files found under {step_dir / 'state'}"


def test_corrupt_newest_checkpoint_resumes_from_the_one_before(tmp_path, reference, caplog):
    train(small_config(stop_at_step=6), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [3, 6]
    _corrupt_data_files(tmp_path / "checkpoints" / "6")
    with caplog.at_level("WARNING"):
        result = train(small_config(), tmp_path)
    assert result["step"] == 12
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "step 6" in warned and "cannot be restored" in warned, warned
    # The run resumed from step 3 and matches the uninterrupted run (steps 4-6 were recomputed,
    # their second log lines win); the unreadable step was kept, set aside when step 6 was saved.
    assert (tmp_path / "checkpoints" / "6.unreadable").is_dir()
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [3, 6, 9, 12]
    _assert_same_run(tmp_path, reference)


def test_no_restorable_checkpoint_is_a_short_error(tmp_path):
    train(small_config(stop_at_step=3), tmp_path)
    _corrupt_data_files(tmp_path / "checkpoints" / "3")
    with pytest.raises(NoRestorableCheckpointError, match=r"step 3 \("):
        train(small_config(), tmp_path)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = small_config()
    config.optimizer.lr = 1e30
    config.optimizer.warmup_steps = 4
    config.optimizer.grad_clip = 0.0
    config.checkpoint.every_steps = 1
    with pytest.raises(TrainingDivergedError, match="non-finite loss .* Last good checkpoint: step"):
        train(config, tmp_path)
    steps = Checkpointer(tmp_path / "checkpoints").all_steps()
    assert steps and max(steps) < 12
    state, _, meta = _restore(config, tmp_path)
    assert meta["step"] == max(steps)
    last_logged = max(losses(tmp_path))
    # The saved state is the one before the first non-finite loss, and it is finite.
    assert int(state.step) <= last_logged
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


class _CorruptEveryEighth:
    """Procedural images, except that every eighth record holds undecodable bytes."""

    def __init__(self):
        self._source = ProceduralImageSource(32, 32)

    def __len__(self):
        return len(self._source)

    def __getitem__(self, i):
        return {"image": b"not an image", "label": 0} if i % 8 == 0 else self._source[i]


def test_corrupt_images_are_counted(tmp_path):
    result = train(small_config(total_steps=3), tmp_path, source=_CorruptEveryEighth())
    # 3 batches of 16 cover the 32 records at least once: all 4 corrupt ones are skipped.
    assert result["data/skipped"] >= 4
    assert losses(tmp_path) and np.isfinite(result["loss"])


def test_finetune_from_official_checkpoint(tmp_path, parity_dir):
    path = parity_dir / "flextok_tiny.safetensors"
    config = small_config(total_steps=2, init_from=str(path))
    config.model.vae = {"block_out_channels": (16, 32, 32, 32), "layers_per_block": 1, "norm_num_groups": 8}
    config.data.image_size = 64
    config.train.global_batch_size = 8
    official_model, official = load_official_checkpoint(path, TrainSetup.from_config(config).task.model.config.vae)
    result = train(config, tmp_path)
    assert np.isfinite(result["loss"]) and result["step"] == 2
    model, exported = load_model(tmp_path / "export" / "flextok.safetensors")
    assert model.config.replace(repa_layer=None) == official_model.config.replace(repa_layer=None)
    # The VAE is frozen: bit-identical after training; the encoder moved.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, exported["vae"]), official["vae"])
    enc_diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                            exported["encoder"], official["encoder"]))
    assert max(enc_diff) > 0
    images = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    assert model.tokenize(exported, images).shape == (1, model.config.n_registers)
