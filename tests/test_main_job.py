"""The README's main job, shortened: train tiny_cpu, then the coarse-to-fine evaluation."""
import json
import subprocess
import sys

from helpers import REPO


def test_main_job_short_run_is_coarse_to_fine(tmp_path):
    workdir = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.main", "--config", "configs/tiny_cpu.py", "--workdir", str(workdir),
         "--config.train.total_steps=400", "--config.log.progress=False", "--config.log.grid_every_steps=0",
         "--config.eval.num_steps=10"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens k |" in proc.stdout  # the error table is printed
    for name in ("reconstructions.png", "loss_curve.png"):
        assert (workdir / name).stat().st_size > 1000, name
    mse = {int(k): v for k, v in json.loads((workdir / "eval.json").read_text())["mse_per_k"].items()}
    ks = sorted(mse)
    assert ks == [1, 2, 4, 8, 16]
    # Coarse to fine: more tokens, lower error (5% slack between neighbours, clear gain overall).
    for a, b in zip(ks, ks[1:]):
        assert mse[b] <= mse[a] * 1.05, mse
    assert mse[16] < 0.9 * mse[1], mse
