"""The main job end to end: tokenizer -> token dataset -> generator -> pictures and tables.

``run(config, workdir)`` trains the tokenizer (``config``), evaluates its reconstructions per k,
and, with ``config.stage2.enabled``: tokenizes the training set into WORKDIR/tokens, trains the
class-conditional generator (``config.stage2.generator``) in WORKDIR/generator, and writes
WORKDIR/samples.png (rows: classes; columns: images decoded from k = 1, 2, 4, ... generated
tokens). On Fashion-MNIST a small classifier trained in the run scores the reconstructions of
held-out images and the generated samples per k, and its penultimate features give FID-FMNIST per k
of the reconstructions (a proxy, not comparable to Inception FID) (WORKDIR/stage2.json). Every stage resumes:
rerun the same command after an interruption.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from flextok_jax import generator
from flextok_jax.data import get_source
from flextok_jax.data.token_dataset import tokenize_dataset
from flextok_jax.evaluate import classifier as classifier_lib
from flextok_jax.evaluate import report as report_lib
from flextok_jax.evaluate import runner as fid_runner
from flextok_jax.evaluate.features import fmnist_network
from flextok_jax.evaluate.grid import save_labelled_grid
from flextok_jax.evaluate.reconstruct import evaluate_run, reconstruct_by_k
from flextok_jax.params_io import EXPORT_FILE, load_model
from flextok_jax.train import train
from flextok_jax.train.generator_task import EXPORT_FILE as GENERATOR_FILE


def generator_run_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """``config.stage2.generator`` reading WORKDIR/tokens (mesh and dtype as the tokenizer's)."""
    g = copy.deepcopy(config.stage2.generator)
    g.data.tokens = os.path.join(workdir, "tokens")
    g.mesh = copy.deepcopy(config.mesh)
    return g


def class_samples(gen: generator.Generator, gparams: Any, tokenizer: Any, tparams: Any, ks: list[int],
                  per_class: int, s2: ml_collections.ConfigDict, seed: int = 0,
                  guidance_scale: float = 1.0) -> np.ndarray:
    """Generated images [len(ks), C * per_class, H, W, 3]: for each k, ``per_class`` samples of
    every class (class-major), each decoded from its first k generated tokens. The tokens for all
    k come from one generation of max(ks) tokens per image, so column k is a prefix of column 2k;
    ``guidance_scale`` is the tokenizer decoder's (``s2.cfg_scale`` the generator's)."""
    labels = np.repeat(np.arange(gen.config.num_classes, dtype=np.int32), per_class)
    return generator.generate_images_by_k(
        gen, gparams, tokenizer, tparams, labels, ks, cfg_scale=float(s2.cfg_scale), temperature=float(s2.temperature),
        top_k=int(s2.top_k), top_p=float(s2.top_p), rng=jax.random.key(seed), num_steps=int(s2.decode_steps),
        guidance_scale=guidance_scale, decode_rng=jax.random.key(seed + 1))


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """The main job; returns {"tokenizer": train result, "mse_per_k", and for stage 2 "generator",
    "reconstruction_accuracy", "sample_accuracy", "reconstruction_fid_fmnist"} (what the run reached)."""
    workdir = os.path.abspath(os.fspath(workdir))
    out: dict[str, Any] = {"tokenizer": train(config, workdir)}
    finished = out["tokenizer"]["step"] >= config.train.total_steps and not out["tokenizer"]["preempted"]
    if not finished:
        return out
    main_process = jax.process_index() == 0
    if config.eval.enabled and main_process:
        out["mse_per_k"] = evaluate_run(config, workdir)
    s2 = config.stage2
    if not s2.enabled:
        return out

    # Every process tokenizes its own shards and trains; process 0 samples and scores.
    tokenizer, tparams = load_model(os.path.join(workdir, "export", EXPORT_FILE))
    print(f"stage 2: tokenizing the training set into {workdir}/tokens")
    tokenize_dataset(tokenizer, tparams, get_source(config.data), os.path.join(workdir, "tokens"),
                     image_size=int(config.data.image_size), batch_size=int(s2.tokenize_batch_size),
                     augment=tuple(s2.augment), progress=bool(config.log.progress))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("flextok_pipeline_tokens_written")
    gconfig = generator_run_config(config, workdir)
    print(f"stage 2: training the generator in {workdir}/generator")
    out["generator"] = train(gconfig, os.path.join(workdir, "generator"))
    if out["generator"]["step"] < gconfig.train.total_steps or not main_process:
        return out
    gen, gparams = generator.load_generator(os.path.join(workdir, "generator", "export", GENERATOR_FILE))

    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= gen.config.max_tokens]
    samples = class_samples(gen, gparams, tokenizer, tparams, ks, int(s2.samples_per_class), s2,
                            guidance_scale=float(config.eval.guidance_scale))
    names = classifier_lib.CLASS_NAMES if config.data.source == "fashion_mnist" else None
    shown = samples.reshape(len(ks), gen.config.num_classes, int(s2.samples_per_class), *samples.shape[2:])[:, :, 0]
    save_labelled_grid(os.path.join(workdir, "samples.png"), shown, [f"k={k}" for k in ks],
                       list(names) if names else [f"class {c}" for c in range(gen.config.num_classes)])
    if config.data.source == "fashion_mnist":
        out.update(fashion_mnist_report(config, workdir, tokenizer, tparams, samples, ks, gen.config.num_classes,
                                        int(s2.samples_per_class)))
    with open(os.path.join(workdir, "stage2.json"), "w") as f:
        json.dump({k: v for k, v in out.items() if k in ("reconstruction_accuracy", "sample_accuracy",
                                                          "classifier_test_accuracy", "reconstruction_fid_fmnist",
                                                          "fid_fmnist")}, f, indent=1)
    return out


def fashion_mnist_report(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any, tparams: Any,
                         samples: np.ndarray, ks: list[int], num_classes: int, per_class: int) -> dict[str, Any]:
    """Train the classifier (seconds), then its accuracy per k on reconstructions of held-out
    test images and on the generated samples (the share classified as the class asked for), and
    FID-FMNIST per k of those reconstructions against the originals (``runner.fid_by_k`` over the
    classifier's penultimate features: a proxy, not comparable to Inception FID)."""
    s2 = config.stage2
    x_train, y_train = classifier_lib.fashion_mnist_arrays("train")
    clf = classifier_lib.train_classifier(x_train, y_train, steps=int(s2.classifier_steps))
    classifier_lib.save_classifier(os.path.join(workdir, "classifier.safetensors"), clf)
    x_test, y_test = classifier_lib.fashion_mnist_arrays("test", int(s2.eval_images))
    test_acc = classifier_lib.accuracy(clf, x_test, y_test)
    recon = reconstruct_by_k(tokenizer, tparams, x_test, ks, num_steps=int(s2.decode_steps),
                             guidance_scale=float(config.eval.guidance_scale))
    recon_acc = classifier_lib.class_accuracy_by_k(clf, recon, y_test, ks)
    asked = np.repeat(np.arange(num_classes), per_class)
    sample_acc = classifier_lib.class_accuracy_by_k(clf, samples, asked, ks)
    print(f"classifier: {test_acc:.1%} on {len(y_test)} Fashion-MNIST test images")
    print(format_accuracy_table(ks, recon_acc, sample_acc))
    network = fmnist_network(clf)
    fid_rows = fid_runner.fid_by_k(network, x_test, recon, ks)
    print(f"FID-FMNIST of {len(y_test)} held-out reconstructions against the originals (a proxy, "
          f"{network.note}):")
    print(report_lib.format_table({"mode": "reconstructions", "network": network.describe(), "rows": fid_rows}))
    return {"classifier_test_accuracy": test_acc, "reconstruction_accuracy": recon_acc, "sample_accuracy": sample_acc,
            "reconstruction_fid_fmnist": {int(r["k"]): r["fid"] for r in fid_rows},
            "fid_fmnist": {"label": network.label, "num_images": len(y_test), "rows": fid_rows}}


def format_accuracy_table(ks: list[int], recon: dict[int, float], samples: dict[int, float]) -> str:
    """tokens k | reconstructions of held-out images | generated samples (classifier accuracy)."""
    lines = ["tokens k | reconstructions | generated samples", "---------|-----------------|------------------"]
    lines += [f"{k:8d} | {recon[k]:14.1%} | {samples[k]:16.1%}" for k in ks]
    return "\n".join(lines)
