"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, every compile kept: many test files compile
# the same tiny train steps. Set here, in the controller, before jax is imported and before
# pytest-xdist starts its workers, so jax reads it and both workers and their subprocesses share it.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flextok_jit_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

# The reference fixtures live in the repository (tests/fixtures, a copy of the project's shared
# parity folder); FLEXTOK_PARITY_DIR points the tests at another copy.
PARITY_DIR = pathlib.Path(os.environ.get("FLEXTOK_PARITY_DIR") or pathlib.Path(__file__).resolve().parent / "fixtures")


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    if not (PARITY_DIR / "flextok_tiny.safetensors").exists():
        raise FileNotFoundError(
            f"parity fixtures not found in {PARITY_DIR}; set FLEXTOK_PARITY_DIR to a folder holding them"
        )
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity_io(parity_dir):
    import numpy as np

    with np.load(parity_dir / "flextok_tiny_io.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def tiny(parity_dir, parity_io):
    """(FlexTok, params) of the official tiny parity checkpoint."""
    import flextok_jax
    from helpers import fixture_vae_config

    return flextok_jax.load_official_checkpoint(
        parity_dir / "flextok_tiny.safetensors", vae_config=fixture_vae_config(parity_io)
    )


# The longest files first: with `-n 2 --dist loadfile` each file runs on one worker, and a long
# file scheduled last (the main-job test) would run alone while the other worker idles.
_LONG_FIRST = ("test_main_job.py", "test_notebook.py", "test_train_step.py", "test_train_multiprocess.py",
               "test_train_checkpoint.py", "test_text_generator_train.py", "test_dinov2.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
