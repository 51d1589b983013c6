"""Hub ids as checkpoint names (flextok_jax.hub), offline, from a hub cache laid out by hand.

The cache holds the tiny parity checkpoint under a made-up repository id, in huggingface_hub's
own layout (models--OWNER--NAME/{blobs/<sha256>, refs/main, snapshots/<commit>/model.safetensors
-> ../../blobs/<sha256>}). Offline mode is on and every socket connection fails the test, so
nothing is ever fetched.
"""
import hashlib
import os
import socket
import sys

import huggingface_hub.constants as hf_constants
import jax
import numpy as np
import pytest

import flextok_jax
from flextok_jax.hub import HUB_FILENAME, looks_like_repo_id, resolve_checkpoint

from helpers import fixture_vae_config

REPO_ID = "EPFL-VILAB/flextok_tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _lay_out_cache(cache: os.PathLike, checkpoint: os.PathLike) -> str:
    """Put ``checkpoint`` into ``cache`` as huggingface_hub stores REPO_ID's model.safetensors."""
    data = open(checkpoint, "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    repo = os.path.join(cache, "models--" + REPO_ID.replace("/", "--"))
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(os.path.join(repo, "refs"))
    os.makedirs(os.path.join(repo, "snapshots", COMMIT))
    with open(os.path.join(repo, "blobs", sha), "wb") as f:
        f.write(data)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(COMMIT)
    link = os.path.join(repo, "snapshots", COMMIT, HUB_FILENAME)
    os.symlink(os.path.join("..", "..", "blobs", sha), link)
    return link


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, parity_dir, no_network):
    """An offline hub cache under tmp_path holding the tiny checkpoint; returns its snapshot path."""
    cache = tmp_path / "hf_home" / "hub"
    link = _lay_out_cache(cache, parity_dir / "flextok_tiny.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these variables once, at import: set what it read, too.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return link


def test_hub_id_loads_from_offline_cache(offline_cache, parity_dir, parity_io):
    vae = fixture_vae_config(parity_io)
    model, params = flextok_jax.load_official_checkpoint(REPO_ID, vae_config=vae)
    ref_model, ref_params = flextok_jax.load_official_checkpoint(parity_dir / "flextok_tiny.safetensors", vae_config=vae)
    assert model.config == ref_model.config
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref_params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_array_equal(a, b)


def test_resolve_with_explicit_cache_dir(tmp_path, parity_dir, monkeypatch, no_network):
    cache = tmp_path / "elsewhere"
    link = _lay_out_cache(cache, parity_dir / "flextok_tiny.safetensors")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    path = resolve_checkpoint(REPO_ID, cache_dir=cache)
    assert os.path.samefile(path, link)


def test_uncached_hub_id_offline_names_the_repository(offline_cache):
    with pytest.raises(FileNotFoundError, match=r"EPFL-VILAB/flextok_other.*model\.safetensors.*offline: True"):
        flextok_jax.load_official_checkpoint("EPFL-VILAB/flextok_other")


def test_missing_huggingface_hub_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # "owner/name" must not exist as a path here
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(ImportError, match=r"pip install 'flextok_jax\[hub\]'"):
        resolve_checkpoint(REPO_ID)


def test_paths_are_not_hub_ids(monkeypatch, tmp_path, parity_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # a path never reaches the hub
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").write_bytes(b"")
    assert resolve_checkpoint("owner/name") == "owner/name"  # an existing file wins
    assert [looks_like_repo_id(s) for s in ("owner/name", "a/b/c", "ckpt/model.safetensors", "/abs/x", "x")] == [
        False, False, False, False, False
    ]
    assert looks_like_repo_id("EPFL-VILAB/flextok_d18_d28_dfn")
    for missing in ("ckpts/model.safetensors", "nowhere/at/all"):
        with pytest.raises(FileNotFoundError, match=f"no checkpoint file at {missing}"):
            flextok_jax.load_official_checkpoint(missing)
