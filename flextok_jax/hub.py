"""Checkpoints named by a Hugging Face hub repository id ("EPFL-VILAB/flextok_d18_d28_dfn").

``huggingface_hub`` is an optional dependency (``pip install 'flextok_jax[hub]'``), imported only
when a name is resolved through the hub. Files land in (and are read from) its normal cache
(``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``); with ``HF_HUB_OFFLINE=1`` nothing is
fetched and a cached copy is used.
"""
from __future__ import annotations

import os
import re

HUB_FILENAME = "model.safetensors"
# owner/name as the hub spells repository ids: letters, digits, '-', '_', '.' in each part.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def looks_like_repo_id(name: str) -> bool:
    """True for 'owner/name' strings that are not an existing path (nor a .safetensors file name)."""
    return bool(_REPO_ID.fullmatch(name)) and not name.endswith(".safetensors") and not os.path.exists(name)


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """A local path, returned as is, or a hub id, returned as the path of its cached
    ``model.safetensors`` (downloaded first unless cached or offline).

    ``cache_dir``: the hub cache folder; None means huggingface_hub's own (``HF_HUB_CACHE``).
    Raises ImportError naming the extra to install when huggingface_hub is missing, and
    FileNotFoundError when the hub has no such file or (offline) the cache does not hold it.
    """
    name = os.fspath(path_or_repo_id)
    if not looks_like_repo_id(name):
        return name
    try:  # optional: only hub ids need it
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:
        raise ImportError(
            f"{name!r} is no local file, so it was read as a Hugging Face hub id, which needs "
            "huggingface_hub: pip install 'flextok_jax[hub]'"
        ) from e
    try:
        return hf_hub_download(repo_id=name, filename=HUB_FILENAME, cache_dir=cache_dir)
    except (EntryNotFoundError, RepositoryNotFoundError) as e:
        raise FileNotFoundError(
            f"no checkpoint file at {name!r}, and {HUB_FILENAME} of the hub repository {name!r} is neither "
            f"cached (in {cache_dir or constants.HF_HUB_CACHE}) nor could it be fetched "
            f"(offline: {constants.HF_HUB_OFFLINE}): {e}"
        ) from e
