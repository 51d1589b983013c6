"""Two processes on 127.0.0.1 (jax.distributed, 2 CPU devices each), started by
launch/local_multiprocess.sh, train, checkpoint and resume."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
from helpers import REPO

from flextok_jax import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, *overrides: str) -> list[str]:
    """Run launch/local_multiprocess.sh with 2 processes; returns each process's log."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), DEVICES_PER_PROCESS="2",
               PYTHONPATH=str(REPO))
    args = ["bash", str(REPO / "launch" / "local_multiprocess.sh"), "2", "configs/tiny_cpu.py", str(workdir),
            "--config.train.total_steps=5", "--config.optimizer.warmup_steps=2", "--config.log.every_steps=1",
            "--config.log.grid_every_steps=0", "--config.log.progress=False", "--config.eval.enabled=False",
            "--config.stage2.enabled=False", "--config.data.source=procedural",
            "--config.checkpoint.every_steps=3", "--config.mesh.shape=(2,2,1)", *overrides]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    logs = [(workdir / f"process_{i}.log").read_text() for i in range(2)]
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n".join(log[-2000:] for log in logs)
    return logs


def test_two_processes_train_save_and_resume(tmp_path):
    _launch(tmp_path, "--config.train.stop_at_step=3")
    ckpt = tmp_path / "checkpoints" / "3"
    # Each process stores its own data-iterator position next to the shared sharded state.
    assert sorted(p.name for p in (ckpt / "data").glob("*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
    states = [json.loads((ckpt / "data" / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert states[0] and states[1]
    outs = _launch(tmp_path)
    assert "'step': 5" in outs[0]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["loss"] == r["loss"] for r in rows)  # finite (not NaN)
    model, params = load_model(tmp_path / "export" / "flextok.safetensors")
    images = np.zeros((2, 32, 32, 3), np.float32)
    assert model.tokenize(params, images).shape == (2, model.config.n_registers)
