"""Length-bucketed vs fixed-length generator training at equal compute, on a token dataset.

    python -m flextok_jax.benchmarks.buckets --tokens WORKDIR/tokens --workdir /tmp/buckets \\
        [--tokenizer WORKDIR/export/flextok.safetensors --classifier WORKDIR/classifier.safetensors]

Trains the same generator (the main job's: depth 4, width 128) twice through the training
system, for the same number of steps at the same tokens per step: once on full-length sequences
(``max_tokens``, the fixed baseline), once length-bucketed (``data.buckets``, mode 'prefix',
equal weights). Prints, per run: wall seconds, training tokens/s, and the teacher-forced loss per
position band at full length on ``--eval_records`` records (the same records for both, class
dropout off); with a tokenizer and a Fashion-MNIST classifier also the share of generated samples
classified as the class asked for, per k (the main job's proxy). ``--eval_every N`` evaluates
both every N steps and reports the training seconds each needs to reach each run's final loss,
overall and per position band (steps to it x the median seconds per step of the logged intervals).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from flextok_jax import generator
from flextok_jax.data.token_source import TokenDataSource
from flextok_jax.generator.loss import next_token_loss
from flextok_jax.train import config as train_config
from flextok_jax.train import TrainSetup, train
from flextok_jax.train.checkpoint import Checkpointer
from flextok_jax.train.generator_task import EXPORT_FILE


def comparison_config(tokens: str, steps: int, batch: int, lengths: Sequence[int] | None) -> ml_collections.ConfigDict:
    """The main job's generator recipe over ``tokens`` (vocabulary, n and classes from its
    manifest and records); bucketed over ``lengths`` at batch x n tokens per step when given."""
    source = TokenDataSource(tokens)
    num_classes = int(source.read_batch(range(min(len(source), 4096)))["label"].max()) + 1
    c = train_config.generator_base_config(train_config.generator_model(
        depth=4, num_classes=num_classes, vocab_size=source.vocab_size, max_tokens=source.num_tokens, dim=128,
        num_heads=2, head_dim=64))
    c.data.tokens = os.path.abspath(tokens)
    c.train.global_batch_size = batch
    c.train.total_steps = steps
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = min(100, steps // 8)
    c.optimizer.ema_decay = 0.99
    c.checkpoint.every_steps = steps
    c.log.every_steps = max(1, steps // 20)
    if lengths:
        c.data.buckets.enabled = True
        c.data.buckets.lengths = tuple(lengths)
        c.data.buckets.tokens_per_step = batch * source.num_tokens
    return c


def band_losses(gen: generator.Generator, params: Any, source: TokenDataSource, num_records: int,
                batch: int = 256) -> dict[str, float]:
    """Teacher-forced loss per position band at full length (``next_token_loss`` metrics, no
    condition dropout) over the first ``num_records`` records."""
    loss_fn = jax.jit(lambda p, labels, tokens: next_token_loss(gen, p, labels, tokens, jax.random.key(0), 0.0)[1])
    sums: dict[str, float] = {}
    count = 0
    for start in range(0, min(num_records, len(source)), batch):
        rows = source.read_batch(range(start, min(start + batch, num_records, len(source))))
        metrics = jax.device_get(loss_fn(params, rows["label"], rows["tokens"][:, : gen.config.max_tokens]))
        n = len(rows["label"])
        for k, v in metrics.items():
            if k == "loss" or k.startswith("loss/pos"):
                sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    return {k: v / count for k, v in sums.items()}


def sample_accuracy(gen: generator.Generator, params: Any, tokenizer_path: str, classifier_path: str,
                    per_class: int = 10) -> dict[int, float]:
    """Share of generated samples (guidance 3, decoder guidance 3, 10 Euler steps) that the
    Fashion-MNIST classifier assigns to the class asked for, per k = 1, 2, 4, ... n."""
    from flextok_jax.evaluate import classifier as classifier_lib
    from flextok_jax.params_io import load_model

    tokenizer, tparams = load_model(tokenizer_path)
    clf = classifier_lib.load_classifier(classifier_path)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= gen.config.max_tokens]
    labels = np.repeat(np.arange(gen.config.num_classes, dtype=np.int32), per_class)
    samples = generator.generate_images_by_k(gen, params, tokenizer, tparams, labels, ks, cfg_scale=3.0,
                                             rng=jax.random.key(0), num_steps=10, guidance_scale=3.0,
                                             decode_rng=jax.random.key(1))
    return classifier_lib.class_accuracy_by_k(clf, samples, labels, ks)


def seconds_per_step(workdir: str, tokens_per_step: int) -> float:
    """The median training seconds per step over the logged intervals of WORKDIR/metrics.jsonl
    (its ``tokens_per_s``): compile time and pauses between segments left out."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [row["tokens_per_s"] for row in map(json.loads, f) if "tokens_per_s" in row]
    return float(tokens_per_step / np.median(rates))


def loss_curve(config: ml_collections.ConfigDict, workdir: str, source: TokenDataSource, eval_every: int,
               eval_records: int) -> list[dict[str, float]]:
    """Train ``config`` in segments of ``eval_every`` steps (``train.stop_at_step``; resuming is
    exact) and after each evaluate the EMA weights at full length (``band_losses``):
    [{"step", "loss", "loss/pos_..."}]."""
    total = int(config.train.total_steps)
    curve = []
    for stop in list(range(eval_every, total, eval_every)) + [total]:
        config.train.stop_at_step = stop
        train(config, workdir)
        setup = TrainSetup.from_config(config)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(config.checkpoint.keep))
        try:
            restored = ckpt.restore_newest(setup.abstract_state)
        finally:
            ckpt.close()
        if restored is None:
            raise RuntimeError(f"{workdir}/checkpoints: no checkpoint after training to step {stop}")
        state = restored[0]
        curve.append({"step": stop, **band_losses(setup.task.gen, jax.device_get(state.ema_params), source, eval_records)})
    return curve


def time_to_loss(curve: list[dict[str, float]], step_seconds: float, target: float, key: str = "loss") -> float:
    """Training seconds until the evaluated ``key`` (the loss, or one band's) first reaches
    ``target`` (steps x seconds per step), or inf where it never does."""
    step = next((row["step"] for row in curve if row[key] <= target), None)
    return float("inf") if step is None else step * step_seconds


def run_comparison(tokens: str, workdir: str, steps: int, batch: int, lengths: Sequence[int], eval_records: int,
                   tokenizer: str | None = None, classifier: str | None = None,
                   eval_every: int = 0) -> dict[str, dict[str, Any]]:
    """Both runs (fixed, then bucketed) in WORKDIR/fixed and WORKDIR/bucketed; their results.
    ``eval_every`` > 0 also evaluates both every so many steps ("curve") and adds the training
    seconds each needs to reach each run's final loss, overall and per band (``add_times_to_loss``)."""
    source = TokenDataSource(tokens)
    results = {}
    for name, buckets in (("fixed", None), ("bucketed", lengths)):
        config = comparison_config(tokens, steps, batch, buckets)
        config.log.progress = False
        run_dir = os.path.join(workdir, name)
        t0 = time.perf_counter()
        curve = loss_curve(config, run_dir, source, eval_every, eval_records) if eval_every > 0 else None
        out = train(config, run_dir)  # finished already when the curve trained it: returns at once
        seconds = time.perf_counter() - t0
        gen, params = generator.load_generator(os.path.join(run_dir, "export", EXPORT_FILE))
        row: dict[str, Any] = {"seconds": seconds, "tokens_per_s": steps * batch * source.num_tokens / seconds,
                               "final_train_loss": out.get("loss", float("nan")),
                               **band_losses(gen, params, source, eval_records)}
        if curve is not None:
            row["curve"] = curve
            row["seconds_per_step"] = seconds_per_step(run_dir, batch * source.num_tokens)
        if tokenizer and classifier:
            row["sample_accuracy"] = sample_accuracy(gen, params, tokenizer, classifier)
        results[name] = row
    if eval_every > 0:
        add_times_to_loss(results)
    return results


def add_times_to_loss(results: dict[str, dict[str, Any]]) -> None:
    """For every run R and every loss L of the curves (all positions, and each band), add to each
    run the training seconds it needs to reach R's final L: ``seconds_to_{R}_{L}`` (inf where it
    never does), e.g. "seconds_to_fixed_loss", "seconds_to_fixed_loss/pos_005-016"."""
    finals = {name: row["curve"][-1] for name, row in results.items()}
    for row in results.values():
        for name, final in finals.items():
            for key in (k for k in final if k.startswith("loss")):
                row[f"seconds_to_{name}_{key}"] = time_to_loss(row["curve"], row["seconds_per_step"], final[key], key)


def format_comparison(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    keys = ["seconds", "tokens_per_s"] + sorted(k for k in results[names[0]] if k.startswith("loss"))
    keys += [k for k in ["seconds_per_step"] + sorted(k for k in results[names[0]] if k.startswith("seconds_to_"))
             if k in results[names[0]]]
    lines = ["metric | " + " | ".join(f"{n:>10}" for n in names), "-|-" + "-|-".join("-" * 10 for _ in names)]
    lines += [f"{k} | " + " | ".join(f"{results[n][k]:10.4g}" for n in names) for k in keys]
    if "curve" in results[names[0]]:
        for i, point in enumerate(results[names[0]]["curve"]):
            lines.append(f"loss at step {point['step']} | " + " | ".join(
                f"{results[n]['curve'][i]['loss']:10.4g}" for n in names))
    if "sample_accuracy" in results[names[0]]:
        for k in results[names[0]]["sample_accuracy"]:
            lines.append(f"samples k={k} | " + " | ".join(f"{results[n]['sample_accuracy'][k]:10.1%}" for n in names))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flextok_jax.benchmarks.buckets", description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", required=True, help="a token dataset folder (flextok tokenize-dataset)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64, help="sequences per step of the fixed run")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2, 4, 8, 16], help="bucket lengths")
    ap.add_argument("--eval_records", type=int, default=4096)
    ap.add_argument("--tokenizer", help="the tokenizer export, for the sample accuracy")
    ap.add_argument("--classifier", help="a Fashion-MNIST classifier file, for the sample accuracy")
    ap.add_argument("--eval_every", type=int, default=0,
                    help="also evaluate both runs every so many steps, and time each to each run's final loss")
    args = ap.parse_args(argv)
    results = run_comparison(args.tokens, args.workdir, args.steps, args.batch, args.lengths, args.eval_records,
                             args.tokenizer, args.classifier, args.eval_every)
    print(format_comparison(results))
    with open(os.path.join(args.workdir, "comparison.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
