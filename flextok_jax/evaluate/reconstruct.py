"""Coarse-to-fine evaluation: reconstruct held-out images from their first k tokens, for each k.

Used at the end of ``flextok_jax.main`` and by the Colab demo: it writes ``reconstructions.png``
(rows: images; columns: the original, then k = 1, 2, 4, ... tokens) and ``loss_curve.png``, and
returns the reconstruction error per k.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from matplotlib.figure import Figure

from flextok_jax import parallel
from flextok_jax.data import get_source
from flextok_jax.data.skips import is_skipped
from flextok_jax.data.transforms import prepare_eval_image
from flextok_jax.evaluate.grid import save_labelled_grid
from flextok_jax.model.flextok import FlexTok, token_budgets
from flextok_jax.params_io import EXPORT_FILE, load_model


@functools.lru_cache(maxsize=16)
def _reconstruct_program(model: FlexTok, ks: tuple[int, ...], num_steps: int, guidance: str, use_guidance: bool,
                         mesh: Mesh | None, rules: tuple) -> Callable[..., jax.Array]:
    def program(params: Any, images: jax.Array, rng: jax.Array, guidance_scale: jax.Array) -> jax.Array:
        noise = jax.random.normal(rng, (images.shape[0],) + model.latent_shape, jnp.float32)
        return model.reconstruct(params, images, ks, noise, num_steps, guidance_scale, guidance, use_guidance)

    if mesh is None:
        return jax.jit(program)
    return parallel.MeshJit(program, mesh, rules, out_shardings=NamedSharding(mesh, P()))


def reconstruct_by_k(
    model: FlexTok,
    params: Any,
    images: Any,
    ks: Sequence[int],
    num_steps: int = 25,
    guidance_scale: float = 1.0,
    guidance: str = "cfg",
    seed: int | jax.Array = 0,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES,
) -> np.ndarray:
    """images [N, H, W, 3] in [-1, 1] -> reconstructions [len(ks), N, H, W, 3] from the first k
    tokens, one compiled program for all k (``FlexTok.reconstruct``), with the same start noise
    for every k so columns differ only by how many tokens they were given.

    ``mesh``: run on a mesh (``images`` and ``params`` global arrays, e.g. inside training on
    several hosts); the result is replicated, so every process gets it.
    """
    model._check_images(images)
    rng = jax.random.key(seed) if isinstance(seed, int) else seed
    program = _reconstruct_program(model, tuple(int(k) for k in ks), int(num_steps), guidance,
                                   float(guidance_scale) != 1.0, mesh, tuple(tuple(r) for r in rules))
    return np.asarray(program(params, images, rng, jnp.float32(guidance_scale)))


def reconstruction_errors(images: np.ndarray, recon: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Mean squared error per k over images in [-1, 1] (recon clipped to that range)."""
    diff = np.clip(recon, -1, 1) - images[None]
    return {int(k): float(np.mean(np.square(diff[i]))) for i, k in enumerate(ks)}


def save_reconstructions(path: str | os.PathLike, images: np.ndarray, recon: np.ndarray, ks: Sequence[int]) -> None:
    """PNG grid (rows: images; columns: the original, then k = ...) with a header row."""
    save_labelled_grid(path, np.concatenate([images[None], recon]), ["orig"] + [f"k={k}" for k in ks])


def save_loss_curve(metrics_jsonl: str | os.PathLike, path: str | os.PathLike, key: str = "loss") -> int:
    """Plot ``key`` against step from a metrics JSON-lines file; returns the number of points."""
    steps, values = [], []
    with open(metrics_jsonl) as f:
        for line in f:
            row = json.loads(line)
            if key in row and "step" in row:
                steps.append(row["step"])
                values.append(row[key])
    # A bare Figure (no pyplot): no global backend switch, so notebooks keep showing plots.
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    return len(steps)


def format_error_table(errors: dict[int, float]) -> str:
    """A small text table: tokens k, MSE, PSNR (images in [-1, 1], peak-to-peak 2)."""
    lines = ["tokens k |      MSE | PSNR dB", "---------|----------|--------"]
    for k, mse in errors.items():
        psnr = 10 * np.log10(4.0 / max(mse, 1e-12))
        lines.append(f"{k:8d} | {mse:8.5f} | {psnr:6.2f}")
    return "\n".join(lines)


def held_out_images(data_config: Any, image_size: int, num_images: int) -> np.ndarray:
    """float32 [N, S, S, 3] in [-1, 1] that training never saw: ``data.eval_split`` where given, else
    the test split of Fashion-MNIST, the validation split of a tfds dataset, or another seed of
    the procedural source. An image folder without ``eval_split`` has only its training images."""
    data = ml_collections.ConfigDict(data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config))
    eval_split = data.get("eval_split") or ""
    if data.source == "procedural":
        data.seed = int(data.seed) + 1_000_003
        data.num_images = num_images
    elif eval_split:
        data.split = eval_split
    elif data.source == "fashion_mnist":
        data.split = "test"
    elif data.source == "tfds":
        data.split = "validation"
    else:
        logging.getLogger(__name__).warning(
            "data.source=%r has no held-out split: the reconstructions are of training images "
            "(set data.eval_split to a slice that data.split leaves out)", data.source)
    source = get_source(data)
    out = []
    for i in range(len(source)):
        record = prepare_eval_image({**source[i], "index": i}, image_size)
        if not is_skipped(record):
            out.append(record["image"])
        if len(out) == num_images:
            break
    return np.stack(out)


def evaluate_run(config: Any, workdir: str | os.PathLike, print_table: bool = True) -> dict[int, float]:
    """The end-of-run check of ``flextok_jax.main``: reconstruction error per k of held-out images.

    Reads the exported EMA weights from WORKDIR/export, writes WORKDIR/reconstructions.png,
    WORKDIR/loss_curve.png and WORKDIR/eval.json; returns {k: MSE}.
    """
    workdir = os.fspath(workdir)
    model, params = load_model(os.path.join(workdir, "export", EXPORT_FILE))
    images = held_out_images(config.data, model.config.image_size[0], int(config.eval.num_images))
    ks = token_budgets(model.config.n_registers)
    recon = reconstruct_by_k(model, params, images, ks, num_steps=int(config.eval.num_steps),
                             guidance_scale=float(config.eval.guidance_scale))
    errors = reconstruction_errors(images, recon, ks)
    save_reconstructions(os.path.join(workdir, "reconstructions.png"), images, recon, ks)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        save_loss_curve(metrics, os.path.join(workdir, "loss_curve.png"))
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump({"mse_per_k": {str(k): v for k, v in errors.items()}}, f, indent=1)
    if print_table:
        print(f"reconstruction error of {len(images)} held-out images ({int(config.eval.num_steps)} Euler steps, "
              f"guidance {float(config.eval.guidance_scale):g}):")
        print(format_error_table(errors))
    return errors
