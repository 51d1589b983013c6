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
from flextok_jax.data.factory import FirstImages
from flextok_jax.data.token_dataset import tokenize_dataset
from flextok_jax.data.token_source import TokenDataSource
from flextok_jax.evaluate import adaptive as adaptive_lib
from flextok_jax.evaluate import classifier as classifier_lib
from flextok_jax.evaluate import report as report_lib
from flextok_jax.evaluate import runner as fid_runner
from flextok_jax.evaluate.features import fmnist_network
from flextok_jax.evaluate.grid import save_labelled_grid
from flextok_jax.evaluate.reconstruct import evaluate_run, reconstruct_by_k
from flextok_jax.generator.prompts import encode_prompts
from flextok_jax.model.flextok import fewest_tokens
from flextok_jax.params_io import EXPORT_FILE, load_model
from flextok_jax.text import MiniLM
from flextok_jax.text import captions
from flextok_jax.train import train
from flextok_jax.train.generator_task import EXPORT_FILE as GENERATOR_FILE

STAGE2_FILE = "stage2.json"
TEXT_STAGE_FILE = "text_stage.json"
ADAPTIVE_STAGE_FILE = "adaptive_stage.json"
CLASSIFIER_FILE = "classifier.safetensors"


def generator_run_config(config: ml_collections.ConfigDict, workdir: str,
                         generator_config: ml_collections.ConfigDict | None = None,
                         tokens: str = "tokens") -> ml_collections.ConfigDict:
    """``generator_config`` (default ``config.stage2.generator``) reading WORKDIR/``tokens`` (mesh
    and progress bar as the tokenizer's)."""
    g = copy.deepcopy(config.stage2.generator if generator_config is None else generator_config)
    g.data.tokens = os.path.join(workdir, tokens)
    g.mesh = copy.deepcopy(config.mesh)
    g.log.progress = config.log.progress
    return g


def samples_by_k(gen: generator.Generator, gparams: Any, tokenizer: Any, tparams: Any, cond: Any, ks: list[int],
                 s2: ml_collections.ConfigDict, guidance_scale: float, seed: int = 0) -> np.ndarray:
    """Generated images [len(ks), B, H, W, 3] for ``cond`` (B labels or a text condition), with the
    sampling settings of ``s2`` (``config.stage2``): row i decoded from the first ks[i] ids of one
    generation of max(ks) tokens per image, so column k is a prefix of column 2k.
    ``guidance_scale`` is the tokenizer decoder's (``s2.cfg_scale`` the generator's)."""
    return generator.generate_images_by_k(
        gen, gparams, tokenizer, tparams, cond, ks, cfg_scale=float(s2.cfg_scale), temperature=float(s2.temperature),
        top_k=int(s2.top_k), top_p=float(s2.top_p), rng=jax.random.key(seed), num_steps=int(s2.decode_steps),
        guidance_scale=guidance_scale, decode_rng=jax.random.key(seed + 1))


def held_out_prompts(per_prompt: int) -> tuple[list[str], np.ndarray]:
    """(prompts, classes int32 [N]): every Fashion-MNIST class in every held-out paraphrase
    (``text.captions.HELD_OUT_TEMPLATES``, never seen in training), ``per_prompt`` times each;
    class-major, then template, then repeat."""
    prompts = [captions.caption(c, template) for c in range(captions.NUM_CLASSES)
               for template in captions.HELD_OUT_TEMPLATES for _ in range(per_prompt)]
    classes = np.repeat(np.arange(captions.NUM_CLASSES, dtype=np.int32), len(captions.HELD_OUT_TEMPLATES) * per_prompt)
    return prompts, classes


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """The main job; returns {"tokenizer": train result, "mse_per_k"}, and for stage 2
    {"generator", "reconstruction_accuracy", "sample_accuracy", "reconstruction_fid_fmnist", ...}
    and for its text stage {"text_generator", "text_sample_accuracy", ...} (what the run reached).
    A stage whose results file (WORKDIR/stage2.json, text_stage.json) exists is not redone."""
    workdir = os.path.abspath(os.fspath(workdir))
    s2 = config.stage2
    if s2.enabled and s2.text.enabled and config.data.source != "fashion_mnist":
        raise ValueError("stage2.text.enabled needs data.source='fashion_mnist' (its captions name the "
                         f"Fashion-MNIST classes), got data.source={config.data.source!r}")
    if s2.enabled and s2.adaptive.enabled and config.data.source != "fashion_mnist":
        raise ValueError("stage2.adaptive.enabled needs data.source='fashion_mnist' (the run's classifier scores "
                         f"its samples), got data.source={config.data.source!r}")
    out: dict[str, Any] = {"tokenizer": train(config, workdir)}
    finished = out["tokenizer"]["step"] >= config.train.total_steps and not out["tokenizer"]["preempted"]
    if not finished:
        return out
    main_process = jax.process_index() == 0
    if config.eval.enabled and main_process:
        out["mse_per_k"] = evaluate_run(config, workdir)
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
    out.update(class_stage(config, workdir, tokenizer, tparams, main_process))
    if s2.text.enabled and _finished(out["generator"], s2.generator):
        out.update(text_stage(config, workdir, tokenizer, tparams, main_process))
    if s2.adaptive.enabled and _finished(out["generator"], s2.generator):
        out.update(adaptive_stage(config, workdir, tokenizer, tparams, main_process))
    return out


def _finished(result: dict[str, Any], config: ml_collections.ConfigDict) -> bool:
    return result["step"] >= config.train.total_steps and not result.get("preempted", False)


def _read_results(path: str) -> dict[str, Any]:
    """A results file of this module, with its per-k tables keyed by int k again."""
    with open(path) as f:
        results = json.load(f)
    per_k = ("reconstruction_accuracy", "sample_accuracy", "reconstruction_fid_fmnist", "text_sample_accuracy",
             "fixed_reconstruction_accuracy")
    return {name: ({int(k): v for k, v in value.items()} if name in per_k else value) for name, value in results.items()}


def _write_results(path: str, results: dict[str, Any]) -> None:
    tmp = path + ".tmp"  # written last and renamed: its presence means the stage is complete
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def _token_ks(max_tokens: int) -> list[int]:
    return [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= max_tokens]


def _generator_stage(key: str, what: str, gconfig: ml_collections.ConfigDict, gdir: str, results_path: str,
                     main_process: bool) -> tuple[dict[str, Any], tuple[generator.Generator, Any] | None]:
    """Train (or resume) ``gconfig`` in ``gdir``; ({key: train result} plus the kept results when
    ``results_path`` exists, the exported (generator, params) to sample from or None when there is
    nothing to do: unfinished, not process 0, or already scored)."""
    print(f"stage 2: training {what} in {gdir}")
    out: dict[str, Any] = {key: train(gconfig, gdir)}
    if not _finished(out[key], gconfig) or not main_process:
        return out, None
    if os.path.exists(results_path):
        print(f"stage 2: {results_path} exists; keeping its samples and scores")
        return {**out, **_read_results(results_path)}, None
    return out, generator.load_generator(os.path.join(gdir, "export", GENERATOR_FILE))


def class_stage(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any, tparams: Any,
                main_process: bool) -> dict[str, Any]:
    """Train the class-conditional generator on WORKDIR/tokens (WORKDIR/generator), then write
    samples.png (rows: classes; columns: k) and, on Fashion-MNIST, the classifier's scores per k
    (WORKDIR/stage2.json)."""
    s2 = config.stage2
    results_path = os.path.join(workdir, STAGE2_FILE)
    out, loaded = _generator_stage("generator", "the generator", generator_run_config(config, workdir),
                                   os.path.join(workdir, "generator"), results_path, main_process)
    if loaded is None:
        return out
    gen, gparams = loaded
    ks = _token_ks(gen.config.max_tokens)
    per_class = int(s2.samples_per_class)
    labels = np.repeat(np.arange(gen.config.num_classes, dtype=np.int32), per_class)
    samples = samples_by_k(gen, gparams, tokenizer, tparams, labels, ks, s2, float(config.eval.guidance_scale))
    names = classifier_lib.CLASS_NAMES if config.data.source == "fashion_mnist" else None
    shown = samples.reshape(len(ks), gen.config.num_classes, per_class, *samples.shape[2:])[:, :, 0]
    save_labelled_grid(os.path.join(workdir, "samples.png"), shown, [f"k={k}" for k in ks],
                       list(names) if names else [f"class {c}" for c in range(gen.config.num_classes)])
    results: dict[str, Any] = {}
    if config.data.source == "fashion_mnist":
        results = fashion_mnist_report(config, workdir, tokenizer, tparams, samples, ks, labels)
    _write_results(results_path, results)
    return {**out, **results}


def text_stage(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any, tparams: Any,
               main_process: bool) -> dict[str, Any]:
    """Train the text-conditional generator (``config.stage2.text.generator``) on WORKDIR/tokens
    with template captions (WORKDIR/text_generator), then generate for the held-out paraphrases
    (``held_out_prompts``), score the samples with the run's classifier per k, and write
    WORKDIR/text_samples.png (rows: one held-out prompt per class; columns: k) and
    text_stage.json ({"text_sample_accuracy": {k: share}, "text_sample_accuracy_by_template"})."""
    t, s2 = config.stage2.text, config.stage2
    results_path = os.path.join(workdir, TEXT_STAGE_FILE)
    out, loaded = _generator_stage("text_generator", "the text-conditional generator",
                                   generator_run_config(config, workdir, t.generator),
                                   os.path.join(workdir, "text_generator"), results_path, main_process)
    if loaded is None:
        return out
    gen, gparams = loaded
    ks = _token_ks(gen.config.max_tokens)
    per_prompt = int(t.samples_per_prompt)
    prompts, asked = held_out_prompts(per_prompt)
    cond = encode_prompts(MiniLM.from_pretrained(), prompts, gen.config)
    samples = samples_by_k(gen, gparams, tokenizer, tparams, cond, ks, s2, float(config.eval.guidance_scale))
    clf = fashion_mnist_classifier(config, workdir)
    accuracy = classifier_lib.class_accuracy_by_k(clf, samples, asked, ks)
    n_templates = len(captions.HELD_OUT_TEMPLATES)
    template_of = np.tile(np.repeat(np.arange(n_templates), per_prompt), captions.NUM_CLASSES)
    by_template = {captions.HELD_OUT_TEMPLATES[j]: classifier_lib.class_accuracy_by_k(
        clf, samples[:, template_of == j], asked[template_of == j], ks) for j in range(n_templates)}
    # One row per class, its paraphrase rotating through the held-out templates.
    rows = [(c * n_templates + c % n_templates) * per_prompt for c in range(captions.NUM_CLASSES)]
    save_labelled_grid(os.path.join(workdir, "text_samples.png"), samples[:, rows], [f"k={k}" for k in ks],
                       [prompts[i] for i in rows])
    print(f"text-conditional samples for {len(prompts)} held-out paraphrases ({n_templates} templates x "
          f"{captions.NUM_CLASSES} classes x {per_prompt}), classified as the class the prompt names:")
    print("tokens k | " + " | ".join(f"{k:5d}" for k in ks))
    print("accuracy | " + " | ".join(f"{accuracy[k]:5.1%}" for k in ks))
    results = {"text_sample_accuracy": accuracy, "text_sample_accuracy_by_template": by_template,
               "num_text_samples": len(prompts)}
    _write_results(results_path, results)
    return {**out, **results}


def adaptive_stage(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any, tparams: Any,
                   main_process: bool) -> dict[str, Any]:
    """Adaptive length end to end (``config.stage2.adaptive``): tokenize the first ``num_images``
    training images to their fewest tokens within ``quality`` (WORKDIR/adaptive_tokens), train the
    generator with EOS on those lengths (WORKDIR/adaptive_generator), sample until EOS for every
    class, and report (WORKDIR/adaptive_stage.json, adaptive_samples.png, adaptive_lengths.png):
    the generated lengths per class against the data's, the classifier's accuracy on the samples,
    and on held-out test images the tokens saved at equal quality (``adaptive.equal_quality``) and
    the classifier's accuracy on their reconstructions at their adaptive lengths and at each fixed k."""
    a, s2 = config.stage2.adaptive, config.stage2
    tokens_dir = os.path.join(workdir, "adaptive_tokens")
    source = FirstImages(get_source(config.data), int(a.num_images))
    print(f"stage 2: tokenizing {len(source)} training images to their fewest tokens within {a.quality:g} "
          f"into {tokens_dir}")
    tokenize_dataset(tokenizer, tparams, source, tokens_dir, image_size=int(config.data.image_size),
                     batch_size=int(s2.tokenize_batch_size), quality=float(a.quality),
                     quality_steps=int(a.quality_steps), progress=bool(config.log.progress))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("flextok_pipeline_adaptive_tokens_written")
    results_path = os.path.join(workdir, ADAPTIVE_STAGE_FILE)
    out, loaded = _generator_stage("adaptive_generator", "the generator with EOS on adaptive lengths",
                                   generator_run_config(config, workdir, a.generator, "adaptive_tokens"),
                                   os.path.join(workdir, "adaptive_generator"), results_path, main_process)
    if loaded is None:
        return out
    results = adaptive_report(config, workdir, tokenizer, tparams, *loaded, TokenDataSource(tokens_dir))
    _write_results(results_path, results)
    return {**out, **results}


def adaptive_report(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any, tparams: Any,
                    gen: generator.Generator, gparams: Any, records: TokenDataSource) -> dict[str, Any]:
    """The adaptive stage's samples, scores and figures (see ``adaptive_stage``) for the trained
    generator with EOS and its token ``records``."""
    a, s2 = config.stage2.adaptive, config.stage2
    n, num_classes, names = gen.config.max_tokens, gen.config.num_classes, list(classifier_lib.CLASS_NAMES)
    data = records.read_batch(range(len(records)))
    data_lengths = adaptive_lib.lengths_by_class(data["length"], data["label"], num_classes)
    per_class = int(a.samples_per_class)
    asked = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    decode = dict(num_steps=int(s2.decode_steps), guidance_scale=float(config.eval.guidance_scale))
    samples, lengths = generator.generate_images(
        gen, gparams, tokenizer, tparams, asked, None, cfg_scale=float(s2.cfg_scale), temperature=float(s2.temperature),
        top_k=int(s2.top_k), top_p=float(s2.top_p), rng=jax.random.key(0), decode_rng=jax.random.key(1),
        return_num_tokens=True, **decode)
    samples = np.asarray(samples)
    generated_lengths = adaptive_lib.lengths_by_class(lengths, asked, num_classes)
    clf = fashion_mnist_classifier(config, workdir)
    sample_accuracy = classifier_lib.accuracy(clf, samples, asked)

    # Held-out test images: the share within the target at each fixed k against the adaptive
    # choice, and the classifier on reconstructions at both. The fixed-k reconstructions are
    # decoded as the class stage decodes them (its table again); an image's adaptive
    # reconstruction is its column at the chosen k, which is one of them.
    x_test, y_test = classifier_lib.fashion_mnist_arrays("test", int(s2.eval_images))
    _, ks, dist = tokenizer.reconstruction_distances(tparams, x_test, None, int(a.quality_steps), 0)
    quality = adaptive_lib.equal_quality(np.asarray(dist), ks, float(a.quality), n)
    chosen = fewest_tokens(np.asarray(dist), ks, float(a.quality), n)[0]
    recon = reconstruct_by_k(tokenizer, tparams, x_test, ks, **decode)
    fixed_recon = classifier_lib.class_accuracy_by_k(clf, recon, y_test, ks)
    at_chosen = recon[np.searchsorted(ks, chosen), np.arange(len(chosen))]
    adaptive_recon = classifier_lib.accuracy(clf, np.clip(at_chosen, -1.0, 1.0), y_test)  # clipped as per k

    # One row per class: 8 of its samples, shortest to longest, each marked with its k.
    order = [np.flatnonzero(asked == c)[np.argsort(lengths[asked == c], kind="stable")] for c in range(num_classes)]
    shown = min(per_class, 8)
    picks = [row[np.linspace(0, per_class - 1, shown).round().astype(int)] for row in order]
    save_labelled_grid(os.path.join(workdir, "adaptive_samples.png"),
                       np.stack([samples[[row[i] for row in picks]] for i in range(shown)]),
                       [f"sample {i + 1}" for i in range(shown)],
                       [f"{name} (mean k {g['mean']:.1f})" for name, g in zip(names, generated_lengths)],
                       [[f"k={lengths[i]}" for i in row] for row in picks])
    adaptive_lib.write_lengths_by_class(
        os.path.join(workdir, "adaptive_lengths.png"), names, data_lengths, generated_lengths,
        f"tokens per image: {len(records)} training images (quality {a.quality:g}) vs {len(asked)} samples")
    print(f"adaptive lengths per class: {len(records)} training images at quality {a.quality:g}, "
          f"{len(asked)} samples that stopped at EOS:")
    print(adaptive_lib.format_lengths_table(names, data_lengths, generated_lengths))
    print(f"samples decoded at their own lengths: {sample_accuracy:.1%} classified as the class asked for")
    print(f"{quality['num_images']} held-out images at quality {a.quality:g}: within it for "
          + ", ".join(f"{share:.1%} at k={k}" for k, share in quality["fixed_share"].items())
          + f"; adaptive {quality['adaptive_share']:.1%} with {quality['adaptive_mean_tokens']:.2f} tokens on average "
          f"against {quality['fixed_tokens_needed']} fixed: {quality['tokens_saved']:.2f} tokens "
          f"({quality['saved_fraction']:.0%}) saved per image")
    print(f"classifier on their reconstructions: {adaptive_recon:.1%} at the adaptive k; "
          + ", ".join(f"{acc:.1%} at k={k}" for k, acc in fixed_recon.items()))
    return {"data_lengths_by_class": data_lengths, "generated_lengths_by_class": generated_lengths,
            "data_mean_tokens": float(np.mean(data["length"])), "generated_mean_tokens": float(lengths.mean()),
            "adaptive_sample_accuracy": sample_accuracy, "num_adaptive_samples": len(asked),
            "equal_quality": quality, "adaptive_reconstruction_accuracy": adaptive_recon,
            "fixed_reconstruction_accuracy": fixed_recon}


def fashion_mnist_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The run's Fashion-MNIST classifier: WORKDIR/classifier.safetensors, trained first
    (``stage2.classifier_steps``, seconds) when that file does not exist yet."""
    path = os.path.join(workdir, CLASSIFIER_FILE)
    if os.path.exists(path):
        return classifier_lib.load_classifier(path)
    x_train, y_train = classifier_lib.fashion_mnist_arrays("train")
    clf = classifier_lib.train_classifier(x_train, y_train, steps=int(config.stage2.classifier_steps))
    classifier_lib.save_classifier(path, clf)
    return clf


def fashion_mnist_report(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any, tparams: Any,
                         samples: np.ndarray, ks: list[int], asked: np.ndarray) -> dict[str, Any]:
    """The classifier's (``fashion_mnist_classifier``) accuracy per k on reconstructions of held-out
    test images and on the generated ``samples`` [K, N, ...] (the share classified as the class
    ``asked`` [N]), and FID-FMNIST per k of those reconstructions against the originals
    (``runner.fid_by_k`` over the classifier's penultimate features: a proxy, not comparable to
    Inception FID)."""
    s2 = config.stage2
    clf = fashion_mnist_classifier(config, workdir)
    x_test, y_test = classifier_lib.fashion_mnist_arrays("test", int(s2.eval_images))
    test_acc = classifier_lib.accuracy(clf, x_test, y_test)
    recon = reconstruct_by_k(tokenizer, tparams, x_test, ks, num_steps=int(s2.decode_steps),
                             guidance_scale=float(config.eval.guidance_scale))
    recon_acc = classifier_lib.class_accuracy_by_k(clf, recon, y_test, ks)
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
