"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

PARITY_DIR = pathlib.Path(
    os.environ.get("FLEXTOK_PARITY_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "parity")
)


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    if not (PARITY_DIR / "flextok_tiny.safetensors").exists():
        raise FileNotFoundError(
            f"parity fixtures not found in {PARITY_DIR}; set FLEXTOK_PARITY_DIR to ../shared/parity"
        )
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity_io(parity_dir):
    import numpy as np

    with np.load(parity_dir / "flextok_tiny_io.npz") as f:
        return {k: f[k] for k in f.files}
