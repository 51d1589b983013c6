"""The README's main job, shortened: tokenizer, coarse-to-fine evaluation, token dataset,
generator, samples.png and the per-k classifier scores."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from helpers import REPO


def test_main_job_short_run_end_to_end(tmp_path):
    workdir = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "flextok_jax.main", "--config", "configs/tiny_cpu.py", "--workdir", str(workdir),
         "--config.train.total_steps=300", "--config.log.progress=False", "--config.log.grid_every_steps=0",
         "--config.eval.num_steps=4", "--config.stage2.generator.train.total_steps=60",
         "--config.stage2.decode_steps=4", "--config.stage2.classifier_steps=300", "--config.stage2.eval_images=200",
         "--config.stage2.samples_per_class=4"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens k |" in proc.stdout and "generated samples" in proc.stdout  # both tables printed
    mse = {int(k): v for k, v in json.loads((workdir / "eval.json").read_text())["mse_per_k"].items()}
    assert sorted(mse) == [1, 2, 4, 8, 16] and all(0 < v < 4 for v in mse.values()), mse
    # The token dataset covers the 60,000 training images, 16 ids each, from the tokenizer's vocabulary.
    manifest = json.loads((workdir / "tokens" / "manifest.json").read_text())
    assert manifest["num_tokens"] == 16 and manifest["vocab_size"] == 1000
    assert manifest["num_records"] == 60_000 and manifest["num_skipped"] == 0
    # samples.png: a header row and a label margin around 10 class rows x 5 k columns of 32 px
    # cells, enlarged 4x; the cells are pictures, not blanks.
    grid = np.asarray(Image.open(workdir / "samples.png").convert("L"), np.float32)
    cells = grid[-10 * 128:, -5 * 128:]
    assert cells.shape == (1280, 640) and cells.std() > 5
    scores = json.loads((workdir / "stage2.json").read_text())
    for name in ("reconstruction_accuracy", "sample_accuracy"):
        assert sorted(int(k) for k in scores[name]) == [1, 2, 4, 8, 16]
        assert all(0 <= v <= 1 for v in scores[name].values())
    # FID-FMNIST (the classifier's features; a proxy, not Inception FID) of the 200 reconstructions.
    fid = {int(k): v for k, v in scores["reconstruction_fid_fmnist"].items()}
    assert sorted(fid) == [1, 2, 4, 8, 16] and all(np.isfinite(v) and v >= 0 for v in fid.values()), fid
    assert "FID-FMNIST" in proc.stdout and "not comparable to Inception FID" in proc.stdout
    # More tokens, closer to the originals: measured 141.3 (k=1) -> 130.6 (k=16) after 300 steps
    # (the full main job: 71.5 -> 41.9). Same images, classifier and start noise for every k.
    assert fid[16] < fid[1] - 3.0, fid
    # 300 steps at lr 4e-3 on all 60,000 images: the judge itself is well above chance.
    assert scores["classifier_test_accuracy"] > 0.6
    # The generator learned from the token dataset: its loss fell from ln(1000) = 6.9.
    rows = [json.loads(line) for line in (workdir / "generator" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.8 * np.log(1000), rows[-1]
