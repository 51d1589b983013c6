"""rFID / gFID per token count k: images -> features -> statistics -> Fréchet distance (+ IS, P/R).

``run_rfid``: held-out images of a source are reconstructed from their first k tokens (all k in
one program, the same start noise for every k); the reference is the features of the same real
images. ``run_gfid``: a class-conditional generator's samples (labels i % num_classes) decoded
from k generated tokens, per k and per CFG scale, against an ADM-format npz's mu / sigma or the
features of a real image source.

Both run on a device mesh (batches laid out with ``parallel.batch_sharding``, features one
jitted program over the global batch, statistics accumulated per device by ``StatsAccumulator``)
and resume: every finished shard of features is a file under WORKDIR/features
(``feature_store``), a rerun computes only the shards that are missing (or unreadable). Every
batch's randomness is ``fold_in(fold_in(key(seed), shard), batch)``, so a resumed run gives the
same numbers as an uninterrupted one. Output: a printed table, WORKDIR/results.json and
WORKDIR/fid_vs_k.png (``report``).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from flextok_jax import parallel
from flextok_jax.data.skips import is_skipped
from flextok_jax.data.transforms import prepare_eval_image
from flextok_jax.evaluate import report
from flextok_jax.evaluate.feature_store import FeatureStore
from flextok_jax.evaluate.features import FeatureNetwork
from flextok_jax.evaluate.fid import FeatureStats, StatsAccumulator, stats_distance
from flextok_jax.evaluate.inception_score import inception_score
from flextok_jax.evaluate.precision_recall import precision_recall
from flextok_jax.evaluate.reconstruct import reconstruct_by_k
from flextok_jax.generator.images import generate_images_by_k
from flextok_jax.model.flextok import token_budgets

REAL = "real"

# shard index, names of the sets still missing -> batches ({set: images [B, H, W, 3]}, real rows)
Producer = Callable[[int, Sequence[str]], Iterator[tuple[dict[str, Any], int]]]


class FewSamplesWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance is singular."""


@dataclasses.dataclass
class SetSummary:
    """Statistics of one image set; ``logits`` [N, C] when the network has them, ``features``
    [N, D] when kept (precision / recall)."""

    name: str
    stats: FeatureStats
    logits: np.ndarray | None = None
    features: np.ndarray | None = None


def set_name(k: int, cfg_scale: float | None = None) -> str:
    """'k=4' (reconstructions) or 'k=4_cfg=3' (samples at CFG scale 3)."""
    return f"k={int(k)}" if cfg_scale is None else f"k={int(k)}_cfg={float(cfg_scale):g}"


def shard_ranges(num: int, shard_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] of consecutive shards of ``shard_size`` covering range(num)."""
    if num < 1 or shard_size < 1:
        raise ValueError(f"need num >= 1 and shard_size >= 1, got {num} and {shard_size}")
    return [(s, min(s + shard_size, num)) for s in range(0, num, shard_size)]


def default_mesh() -> Mesh:
    """Every device of this process on the data axis (``parallel.make_mesh((-1, 1, 1))``)."""
    return parallel.make_mesh((-1, 1, 1), devices=jax.local_devices())


def batch_ways(mesh: Mesh | None) -> int:
    """How many shards a batch is split into on ``mesh`` (1 without one)."""
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape[a] for a in parallel.mesh_batch_axes(mesh)]))


def _check_batch(batch_size: int, mesh: Mesh | None) -> None:
    ways = batch_ways(mesh)
    if batch_size < 1 or batch_size % ways:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of the {ways} batch shards of the mesh")


def _on_mesh(x: np.ndarray, mesh: Mesh | None) -> Any:
    if mesh is None:
        return x
    return jax.device_put(x, parallel.batch_sharding(mesh, parallel.mesh_batch_axes(mesh)))


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x [n, ...] -> [rows, ...] with zero rows appended (n <= rows)."""
    if x.shape[0] == rows:
        return x
    return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])


def load_source_images(source: Sequence[dict[str, Any]], start: int, stop: int, image_size: int) -> np.ndarray:
    """source[start:stop] through ``prepare_eval_image`` -> float32 [m, S, S, 3] in [-1, 1]
    (undecodable records are left out, so m <= stop - start)."""
    out = []
    for i in range(start, stop):
        record = prepare_eval_image({**source[i], "index": i}, image_size)
        if not is_skipped(record):
            out.append(record["image"])
    if not out:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return np.stack(out).astype(np.float32)


def batch_features(network: FeatureNetwork, images: Any, rows: int, mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """images [B, H, W, 3] (B a multiple of the batch shards) -> host (features [rows, D],
    logits [rows, C] or None) of the first ``rows`` images."""
    feats, logits = network.features(images, mesh)
    feats, logits = parallel.gather_to_host((feats, logits))
    return np.asarray(feats[:rows], np.float32), None if logits is None else np.asarray(logits[:rows], np.float32)


def features_of_images(network: FeatureNetwork, images: np.ndarray, batch_size: int = 256,
                       mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """images [N, H, W, 3] in [-1, 1] (host) -> (features [N, D], logits [N, C] or None), in
    batches of ``batch_size`` (the last one zero-padded: one compiled shape)."""
    _check_batch(batch_size, mesh)
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size], np.float32)
        f, lg = batch_features(network, _on_mesh(pad_rows(chunk, batch_size), mesh), len(chunk), mesh)
        feats.append(f)
        logits.append(lg)
    has = network.has_logits
    return np.concatenate(feats), (np.concatenate(logits) if has else None)


def summarize(network: FeatureNetwork, name: str, chunks: Iterator[tuple[np.ndarray, np.ndarray | None]],
              mesh: Mesh | None = None, keep_features: bool = False) -> SetSummary:
    """Feature chunks [m, D] (+ logits) in a fixed order -> their mean / covariance, accumulated
    on ``mesh`` by ``StatsAccumulator`` (chunks padded to the batch shards, padding masked)."""
    acc = StatsAccumulator(network.dim, mesh)
    ways = acc.shards
    logits, feats = [], []
    for f, lg in chunks:
        m = f.shape[0]
        if m == 0:
            continue
        rows = -(-m // ways) * ways
        valid = np.arange(rows) < m
        acc.update(_on_mesh(pad_rows(f, rows), acc.mesh), _on_mesh(valid, acc.mesh))
        if lg is not None:
            logits.append(lg)
        if keep_features:
            feats.append(f)
    stats = acc.result()
    return SetSummary(name, stats, np.concatenate(logits) if logits else None,
                      np.concatenate(feats) if keep_features else None)


def check_sample_count(count: int, network: FeatureNetwork, what: str) -> None:
    """Warn (``FewSamplesWarning``) when ``count`` < the feature width: the covariance is singular."""
    if 0 < count < network.dim:
        warnings.warn(
            f"{what}: {count} samples but {network.dim} feature dimensions ({network.name}): the covariance is "
            f"singular (rank <= {count - 1}), so {network.metric} is biased upwards and not comparable to "
            f"runs with more samples; use at least {network.dim} samples",
            FewSamplesWarning, stacklevel=2,
        )


def score(network: FeatureNetwork, fake: SetSummary, reference: SetSummary | FeatureStats, *,
          is_splits: int = 10, with_precision_recall: bool = False, pr_k: int = 3) -> dict[str, Any]:
    """One row: the Fréchet distance of ``fake`` to ``reference``, IS when there are logits,
    precision / recall of the features when asked (and both sets kept them)."""
    ref_stats = reference.stats if isinstance(reference, SetSummary) else reference
    check_sample_count(fake.stats.count, network, fake.name)
    if ref_stats.count > 0:
        check_sample_count(ref_stats.count, network, "reference")
    if ref_stats.mean.shape != (network.dim,):
        raise ValueError(f"reference statistics are {ref_stats.mean.shape[0]}-dimensional; the {network.name} "
                         f"features are {network.dim}-dimensional")
    row: dict[str, Any] = {"set": fake.name, "num_samples": int(fake.stats.count),
                           "fid": stats_distance(fake.stats, ref_stats)}
    if fake.logits is not None:
        splits = max(1, min(int(is_splits), fake.logits.shape[0]))
        row["is_mean"], row["is_std"] = inception_score(fake.logits, splits)
        row["is_splits"] = splits
    if with_precision_recall:
        ref_feats = reference.features if isinstance(reference, SetSummary) else None
        if ref_feats is None or fake.features is None:
            row["precision"] = row["recall"] = None  # an npz reference has no features
        else:
            row["precision"], row["recall"] = precision_recall(ref_feats, fake.features, k=pr_k)
    return row


def compute_shards(store: FeatureStore, network: FeatureNetwork, sets: Sequence[str], shard_sizes: Sequence[int],
                   produce: Producer, mesh: Mesh | None = None, progress: bool = True,
                   desc: str = "features") -> dict[str, int]:
    """Fill in every missing (set, shard) file: ``produce(shard, missing sets)`` gives the images;
    their features are computed on ``mesh`` and written when the shard is complete.

    Returns {"computed": files written, "loaded": files already complete}.
    """
    num_shards = len(shard_sizes)
    todo: dict[int, list[str]] = {}
    loaded = 0
    for s in range(num_shards):
        missing = [n for n in sets if store.load(n, s, num_shards, network.dim, network.has_logits) is None]
        loaded += len(sets) - len(missing)
        if missing:
            todo[s] = missing
    total = sum(shard_sizes[s] * len(m) for s, m in todo.items())
    computed = 0
    with tqdm(total=total, unit="img", desc=desc, disable=not progress or not total, dynamic_ncols=True) as bar:
        for s, missing in todo.items():
            feats: dict[str, list[np.ndarray]] = {n: [] for n in missing}
            logits: dict[str, list[np.ndarray]] = {n: [] for n in missing}
            for batch, rows in produce(s, missing):
                for n in missing:
                    f, lg = batch_features(network, batch[n], rows, mesh)
                    feats[n].append(f)
                    if lg is not None:
                        logits[n].append(lg)
                    bar.update(rows)
            bar.update(shard_sizes[s] * len(missing) - sum(len(f) for n in missing for f in feats[n]))  # skipped
            for n in missing:
                f = np.concatenate(feats[n]) if feats[n] else np.zeros((0, network.dim), np.float32)
                lg = (np.concatenate(logits[n]) if logits[n] else np.zeros((0, network.num_classes), np.float32)) \
                    if network.has_logits else None
                if jax.process_index() == 0:
                    store.save(n, s, num_shards, f, lg)
                computed += 1
    return {"computed": computed, "loaded": loaded}


def summarize_stored(store: FeatureStore, network: FeatureNetwork, name: str, num_shards: int,
                     mesh: Mesh | None = None, keep_features: bool = False) -> SetSummary:
    """``summarize`` over the set's shard files, in shard order."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for s in range(num_shards):
            data = store.load(name, s, num_shards, network.dim, network.has_logits)
            if data is None:
                raise FileNotFoundError(f"feature shard {store.path(name, s, num_shards)} is missing")
            yield data["features"], data.get("logits")

    return summarize(network, name, chunks(), mesh, keep_features)


def _tokenizer_on_mesh(tokenizer: Any, tparams: Any, mesh: Mesh | None) -> Any:
    if mesh is None:
        return tparams
    return parallel.shard_params(tparams, tokenizer.logical_specs(), mesh)


def _finish(workdir: str, payload: dict[str, Any], network: FeatureNetwork, print_table: bool) -> dict[str, Any]:
    if jax.process_index() == 0:
        report.write_results(os.path.join(workdir, "results.json"), payload)
        report.plot_fid_vs_k(os.path.join(workdir, "fid_vs_k.png"), payload["rows"], network.label)
    if print_table:
        print(report.format_table(payload))
    return payload


def run_rfid(
    tokenizer: Any,
    tparams: Any,
    network: FeatureNetwork,
    source: Sequence[dict[str, Any]],
    workdir: str | os.PathLike,
    *,
    ks: Sequence[int] | None = None,
    num_images: int = 1000,
    batch_size: int = 64,
    shard_size: int = 512,
    num_steps: int = 25,
    guidance_scale: float = 1.0,
    guidance: str = "cfg",
    seed: int = 0,
    mesh: Mesh | None = None,
    with_precision_recall: bool = False,
    is_splits: int = 10,
    progress: bool = True,
    print_table: bool = True,
    describe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reconstruction FID per k of the first ``num_images`` images of ``source`` (a data source:
    records with "image"), against the features of the same real images.

    ``ks``: default 1, 2, 4, ..., n_registers. ``num_steps`` / ``guidance_scale`` / ``guidance``:
    the decoder's flow sampler. ``describe``: JSON-able notes for results.json and the resume plan
    (e.g. the checkpoint path and the source's config). Returns the results.json payload.
    """
    workdir = os.fspath(workdir)
    mesh = default_mesh() if mesh is None else mesh
    _check_batch(batch_size, mesh)
    ks = [int(k) for k in (ks or token_budgets(tokenizer.config.n_registers))]
    image_size = int(tokenizer.config.image_size[0])
    num_images = min(int(num_images), len(source))
    ranges = shard_ranges(num_images, shard_size)
    settings = {"mode": "rfid", "network": network.describe(), "num_images": num_images, "batch_size": int(batch_size),
                "shard_size": int(shard_size), "num_steps": int(num_steps), "guidance_scale": float(guidance_scale),
                "guidance": guidance, "seed": int(seed), "image_size": image_size, "source": repr(source),
                "tokenizer": tokenizer.config.to_dict(), **(describe or {})}
    store = FeatureStore(os.path.join(workdir, "features"), settings)
    params = _tokenizer_on_mesh(tokenizer, tparams, mesh)
    names = [set_name(k) for k in ks]

    def produce(shard: int, missing: Sequence[str]) -> Iterator[tuple[dict[str, Any], int]]:
        images = load_source_images(source, *ranges[shard], image_size)
        for j, start in enumerate(range(0, len(images), batch_size)):
            chunk = images[start : start + batch_size]
            x = _on_mesh(pad_rows(chunk, batch_size), mesh)
            out: dict[str, Any] = {REAL: x} if REAL in missing else {}
            if any(n in missing for n in names):
                rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), shard), j)
                recon = reconstruct_by_k(tokenizer, params, x, ks, num_steps, guidance_scale, guidance, rng, mesh)
                for i, n in enumerate(names):
                    if n in missing:
                        out[n] = _on_mesh(np.clip(recon[i], -1.0, 1.0), mesh)
            yield out, len(chunk)

    work = compute_shards(store, network, [REAL, *names], [b - a for a, b in ranges], produce, mesh, progress, "rfid")
    ref = summarize_stored(store, network, REAL, len(ranges), mesh, with_precision_recall)
    rows = []
    for k, n in zip(ks, names):
        fake = summarize_stored(store, network, n, len(ranges), mesh, with_precision_recall)
        rows.append({"k": k, **score(network, fake, ref, is_splits=is_splits, with_precision_recall=with_precision_recall)})
    payload = {"mode": "rfid", "network": network.describe(), "settings": settings,
               "reference": {"kind": "real images of the source", "num_samples": int(ref.stats.count)},
               "rows": rows, "work": work}
    if ref.logits is not None:
        splits = max(1, min(int(is_splits), ref.logits.shape[0]))
        payload["reference"]["is_mean"], payload["reference"]["is_std"] = inception_score(ref.logits, splits)
    return _finish(workdir, payload, network, print_table)


def run_gfid(
    gen: Any,
    gparams: Any,
    tokenizer: Any,
    tparams: Any,
    network: FeatureNetwork,
    workdir: str | os.PathLike,
    *,
    reference: FeatureStats | None = None,
    reference_source: Sequence[dict[str, Any]] | None = None,
    num_reference: int | None = None,
    ks: Sequence[int] | None = None,
    cfg_scales: Sequence[float] = (1.0,),
    num_samples: int = 1000,
    batch_size: int = 64,
    shard_size: int = 512,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_steps: int = 25,
    guidance_scale: float = 1.0,
    seed: int = 0,
    mesh: Mesh | None = None,
    with_precision_recall: bool = False,
    is_splits: int = 10,
    progress: bool = True,
    print_table: bool = True,
    describe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generation FID per (k, CFG scale; ks default 1, 2, 4, ..., max_tokens): ``num_samples`` samples (labels i % num_classes, the
    first k generated ids decoded with ``num_steps`` / ``guidance_scale``) against ``reference``
    (e.g. ``load_reference_stats`` of an ADM npz; it must come from the same network) or the
    features of the first ``num_reference`` (default ``num_samples``) images of ``reference_source``.
    Every (k, scale) uses the same labels and random keys. Returns the results.json payload.
    """
    if (reference is None) == (reference_source is None):
        raise ValueError("run_gfid needs exactly one of reference (statistics) and reference_source (images)")
    if reference is not None and reference.mean.shape != (network.dim,):
        raise ValueError(f"reference statistics are {reference.mean.shape[0]}-dimensional; the {network.name} "
                         f"features are {network.dim}-dimensional (use statistics of the same network)")
    workdir = os.fspath(workdir)
    mesh = default_mesh() if mesh is None else mesh
    _check_batch(batch_size, mesh)
    max_k = int(gen.config.max_tokens)
    ks = [int(k) for k in (ks or token_budgets(max_k))]
    scales = [float(s) for s in cfg_scales]
    pairs = [(k, s) for k in ks for s in scales]
    names = [set_name(k, s) for k, s in pairs]
    ranges = shard_ranges(int(num_samples), shard_size)
    image_size = int(tokenizer.config.image_size[0])
    num_classes = int(gen.config.num_classes)
    sampling = {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p),
                "num_steps": int(num_steps), "guidance_scale": float(guidance_scale)}
    ref_desc: dict[str, Any]
    if reference is not None:
        ref_desc = {"kind": "statistics", "num_samples": int(reference.count)}
    else:
        num_reference = min(int(num_reference or num_samples), len(reference_source))
        ref_desc = {"kind": "real images", "source": repr(reference_source), "num_images": num_reference}
    settings = {"mode": "gfid", "network": network.describe(), "num_samples": int(num_samples),
                "batch_size": int(batch_size), "shard_size": int(shard_size), "seed": int(seed), **sampling,
                "image_size": image_size, "generator": gen.config.to_dict(), "tokenizer": tokenizer.config.to_dict(),
                "reference": ref_desc, **(describe or {})}
    store = FeatureStore(os.path.join(workdir, "features"), settings)
    params = _tokenizer_on_mesh(tokenizer, tparams, mesh)

    def produce(shard: int, missing: Sequence[str]) -> Iterator[tuple[dict[str, Any], int]]:
        lo, hi = ranges[shard]
        for j, start in enumerate(range(lo, hi, batch_size)):
            labels = (np.arange(start, start + batch_size) % num_classes).astype(np.int32)
            rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), shard), j)
            gen_rng, decode_rng = jax.random.split(rng)
            out = {}
            for s in scales:  # one generation per scale; each k decodes its prefix
                wanted = [(k, n) for (k, s_), n in zip(pairs, names) if s_ == s and n in missing]
                if not wanted:
                    continue
                images = generate_images_by_k(gen, gparams, tokenizer, params, labels, [k for k, _ in wanted],
                                              cfg_scale=s, temperature=temperature, top_k=top_k, top_p=top_p,
                                              rng=gen_rng, num_steps=num_steps, guidance_scale=guidance_scale,
                                              decode_rng=decode_rng)
                for (_, n), x in zip(wanted, images):
                    out[n] = _on_mesh(np.clip(x, -1.0, 1.0), mesh)
            yield out, min(batch_size, hi - start)

    work = compute_shards(store, network, names, [b - a for a, b in ranges], produce, mesh, progress, "gfid")
    if reference_source is not None:
        ref_ranges = shard_ranges(num_reference, shard_size)

        def produce_real(shard: int, missing: Sequence[str]) -> Iterator[tuple[dict[str, Any], int]]:
            images = load_source_images(reference_source, *ref_ranges[shard], image_size)
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                yield {REAL: _on_mesh(pad_rows(chunk, batch_size), mesh)}, len(chunk)

        real_work = compute_shards(store, network, [REAL], [b - a for a, b in ref_ranges], produce_real, mesh,
                                   progress, "reference")
        work = {key: work[key] + real_work[key] for key in work}
        ref: SetSummary | FeatureStats = summarize_stored(store, network, REAL, len(ref_ranges), mesh,
                                                          with_precision_recall)
        ref_desc["num_samples"] = int(ref.stats.count)
    else:
        ref = reference
    rows = []
    for (k, s), n in zip(pairs, names):
        fake = summarize_stored(store, network, n, len(ranges), mesh, with_precision_recall)
        rows.append({"k": k, "cfg_scale": s,
                     **score(network, fake, ref, is_splits=is_splits, with_precision_recall=with_precision_recall)})
    payload = {"mode": "gfid", "network": network.describe(), "settings": settings, "reference": ref_desc,
               "rows": rows, "work": work}
    return _finish(workdir, payload, network, print_table)


def fid_by_k(network: FeatureNetwork, reference_images: np.ndarray, images_by_k: np.ndarray, ks: Sequence[int],
             batch_size: int = 256, mesh: Mesh | None = None, is_splits: int = 10) -> list[dict[str, Any]]:
    """In memory, no files: rows of ``score`` (with "k") for images_by_k [K, N, H, W, 3] against
    reference_images [M, H, W, 3] (e.g. reconstructions of held-out images vs the originals)."""
    images_by_k = np.asarray(images_by_k)
    if images_by_k.ndim != 5 or images_by_k.shape[0] != len(ks):
        raise ValueError(f"images_by_k must be [K={len(ks)}, N, H, W, C], got shape {images_by_k.shape}")
    ref = summarize(network, REAL, iter([features_of_images(network, reference_images, batch_size, mesh)]), mesh)
    rows = []
    for k, images in zip(ks, images_by_k):
        chunk = features_of_images(network, np.clip(images, -1.0, 1.0), batch_size, mesh)
        fake = summarize(network, set_name(k), iter([chunk]), mesh)
        rows.append({"k": int(k), **score(network, fake, ref, is_splits=is_splits)})
    return rows
