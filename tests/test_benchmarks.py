"""The benchmark CLI runs at the tiny size and prints a complete table (no timing assertions)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from flextok_jax.benchmarks.__main__ import COLUMNS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one real CPU device, not conftest's 8 fake ones
    proc = subprocess.run([sys.executable, "-m", "flextok_jax.benchmarks", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.splitlines() if " | " in ln]
    cells = [[c.strip() for c in ln.split(" | ")] for ln in lines]
    header = cells[0]
    return header, [c for c in cells if c != header]  # one header per CLI run


@pytest.fixture(scope="module")
def table():
    out = run_cli("tokenize", "--size", "tiny", "--k", "16", "2", "--repeats", "1", "--ceiling-size", "512")
    out += run_cli("detokenize", "--size", "tiny", "--k", "3", "--steps", "2", "--repeats", "1",
                   "--ceiling-size", "512")
    return out


def test_table_columns_and_positive_numbers(table):
    header, rows = parse_table(table)
    assert header == list(COLUMNS)
    whats = [r[0] for r in rows]
    for name in ("matmul", "vae encode", "vae encode, direct convs", "encoder", "tokenize", "decoder fwd",
                 "cfg step (cond+null packed)", "vae decode", "vae decode, direct convs", "detokenize"):
        assert any(name in w for w in whats), (name, whats)
    numeric = [c for c in COLUMNS if c not in ("what", "k", "dtype")]
    for row in rows:
        assert len(row) == len(COLUMNS), row
        values = dict(zip(header, row))
        for col in numeric:
            if col == "program MiB" and values[col] == "nan":
                continue  # the matmul ceiling rows have no program analysis
            assert float(values[col]) > 0, (col, row)


def test_table_numbers_are_consistent(table):
    """Each row's derived columns follow from its measured ones, and the exact shortcuts show:
    the encoder at k = 2 computes fewer FLOPs than at k = 16."""
    header, rows = parse_table(table)
    for row in rows:
        v = {c: float(x) for c, x in zip(header, row) if c not in ("what", "k", "dtype")}
        np.testing.assert_allclose(v["images/s"], v["batch"] / v["seconds"], rtol=2e-3, err_msg=row[0])
        gflop_s = v["GFLOP/image"] * v["batch"] / v["seconds"]
        np.testing.assert_allclose(v["GFLOP/s"], gflop_s, rtol=2e-3, err_msg=row[0])
        assert 0 < v["% ceiling"] < 150, row
    encoder = {r[2]: float(r[6]) for r in rows if r[0].endswith(" encoder")}
    assert encoder["2"] < encoder["16"], encoder


def test_bucketed_train_rows():
    """train_generator --buckets: one step per bucket at equal tokens per step, and the fixed-length
    step; shorter sequences spend less attention, so a bucket-8 step costs fewer FLOPs than the
    fixed 256-token step holding the same 512 tokens."""
    out = run_cli("train_generator", "--size", "tiny", "--batch", "2", "--buckets", "8", "32", "256",
                  "--tokens_per_step", "512", "--repeats", "1", "--ceiling-size", "256")
    header, rows = parse_table(out)
    steps = {r[0].split(", ")[-1]: dict(zip(header, r)) for r in rows if "ar train step," in r[0]}
    assert set(steps) == {"bucket 8", "bucket 32", "bucket 256", "fixed 256"}, steps
    assert [int(steps[f"bucket {n}"]["batch"]) for n in (8, 32, 256)] == [64, 16, 2]
    flops = {name: float(v["GFLOP/image"]) * int(v["batch"]) for name, v in steps.items()}
    assert flops["bucket 8"] < flops["bucket 32"] < flops["fixed 256"], flops
    np.testing.assert_allclose(flops["bucket 256"], flops["fixed 256"], rtol=1e-6)
