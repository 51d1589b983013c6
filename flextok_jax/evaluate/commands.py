"""Command line of the FID runner: ``rfid`` and ``gfid`` (``python -m flextok_jax.evaluate`` and
``flextok evaluate``; both call ``main`` / ``add_parsers`` here).

    python -m flextok_jax.evaluate rfid --tokenizer CKPT --network fmnist --weights clf.safetensors \\
        --source fashion_mnist --split test --num_images 1000 --workdir runs/rfid
    python -m flextok_jax.evaluate gfid --generator GEN --tokenizer CKPT --network inception \\
        --weights inception.safetensors --reference VIRTUAL_imagenet256.npz --cfg_scales 1 3 --workdir runs/gfid

Rerun the same command to resume (finished feature shards under WORKDIR/features are reused).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections

from flextok_jax.data.factory import SOURCE_FLAGS, add_source_arguments, get_source
from flextok_jax.evaluate import runner
from flextok_jax.evaluate.features import NETWORKS, FeatureNetwork, get_network
from flextok_jax.evaluate.reference_batch import load_reference_stats
from flextok_jax.generator import load_generator
from flextok_jax.params_io import load_checkpoint



def data_config(args: argparse.Namespace, num_images: int, image_size: int) -> ml_collections.ConfigDict:
    """The ``data.get_source`` config of the command's source flags. Fashion-MNIST defaults to its
    held-out test split; the procedural source makes ``num_images`` pictures."""
    data = {f: getattr(args, f) for f in SOURCE_FLAGS}
    data["seed"] = args.source_seed
    if data["source"] == "fashion_mnist" and not data["split"]:
        data["split"] = "test"
    data["num_images"], data["image_size"] = int(num_images), int(image_size)
    return ml_collections.ConfigDict(data)


def _network(args: argparse.Namespace) -> FeatureNetwork:
    kwargs = {"num_heads": args.dinov2_heads} if args.network == "dinov2" and args.dinov2_heads else {}
    return get_network(args.network, args.weights, **kwargs)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="results.json, fid_vs_k.png, features/ (rerun to resume)")
    p.add_argument("--tokenizer", required=True, help="our params file, an official .safetensors or a hub id")
    p.add_argument("--vae_config", help="diffusers config.json of a non-standard VAE (official checkpoints)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--network", required=True, choices=NETWORKS,
                   help="inception (FID), dinov2 (FD-DINOv2) or fmnist (FID-FMNIST, not comparable to Inception FID)")
    p.add_argument("--weights", required=True, help="the feature network's safetensors file")
    p.add_argument("--dinov2_heads", type=int, help="dinov2: attention heads (default: from the file)")
    p.add_argument("--ks", type=int, nargs="+", help="token counts (default 1, 2, 4, ..., n)")
    p.add_argument("--num_steps", type=int, default=25, help="decoder flow steps")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="decoder guidance scale")
    p.add_argument("--batch_size", type=int, default=64, help="global; a multiple of the device count")
    p.add_argument("--shard_size", type=int, default=512, help="images per resumable feature shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision_recall", action="store_true", help="also precision / recall (k=3 neighbours)")
    p.add_argument("--is_splits", type=int, default=10)
    p.add_argument("--no_progress", action="store_true")


def _source_flags(p: argparse.ArgumentParser, required: bool) -> None:
    add_source_arguments(p, required)  # fashion_mnist defaults to its test split here (data_config)
    p.add_argument("--source_seed", type=int, default=0, help="procedural: picture seed")


def rfid_command(args: argparse.Namespace) -> int:
    """``rfid``: reconstruction FID per k of a source's images."""
    network = _network(args)
    tokenizer, tparams = load_checkpoint(args.tokenizer, args.vae_config, jnp.dtype(args.dtype))
    data = data_config(args, args.num_images, tokenizer.config.image_size[0])
    runner.run_rfid(
        tokenizer, tparams, network, get_source(data), args.workdir, ks=args.ks, num_images=args.num_images,
        batch_size=args.batch_size, shard_size=args.shard_size, num_steps=args.num_steps,
        guidance_scale=args.guidance_scale, guidance=args.guidance, seed=args.seed,
        with_precision_recall=args.precision_recall, is_splits=args.is_splits, progress=not args.no_progress,
        describe={"checkpoint": args.tokenizer, "data": data.to_dict()},
    )
    return 0


def gfid_command(args: argparse.Namespace) -> int:
    """``gfid``: generation FID per (k, CFG scale) against an ADM npz or a real source."""
    if (args.reference is None) == (args.source is None):
        raise ValueError("gfid needs exactly one of --reference (an ADM-format npz) and --source (real images)")
    network = _network(args)
    gen, gparams = load_generator(args.generator)
    tokenizer, tparams = load_checkpoint(args.tokenizer, args.vae_config, jnp.dtype(args.dtype))
    describe: dict[str, Any] = {"checkpoint": args.tokenizer, "generator_file": args.generator}
    kwargs: dict[str, Any] = {}
    if args.reference:
        kwargs["reference"] = load_reference_stats(args.reference)
        describe["reference_file"] = args.reference
    else:
        n_ref = args.num_reference or args.num_samples
        data = data_config(args, n_ref, tokenizer.config.image_size[0])
        kwargs.update(reference_source=get_source(data), num_reference=n_ref)
        describe["data"] = data.to_dict()
    runner.run_gfid(
        gen, gparams, tokenizer, tparams, network, args.workdir, ks=args.ks, cfg_scales=args.cfg_scales,
        num_samples=args.num_samples, batch_size=args.batch_size, shard_size=args.shard_size,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, num_steps=args.num_steps,
        guidance_scale=args.guidance_scale, seed=args.seed, with_precision_recall=args.precision_recall,
        is_splits=args.is_splits, progress=not args.no_progress, describe=describe, **kwargs,
    )
    return 0


def add_parsers(sub: Any) -> None:
    """Registers ``rfid`` and ``gfid`` on the subcommand parsers ``sub`` (each sets ``run``)."""
    r = sub.add_parser("rfid", help="reconstruction FID per token count k")
    _common(r)
    _source_flags(r, required=False)
    r.set_defaults(source="fashion_mnist")
    r.add_argument("--num_images", type=int, default=1000)
    r.add_argument("--guidance", choices=("cfg", "apg"), default="cfg")
    r.set_defaults(run=rfid_command)

    g = sub.add_parser("gfid", help="generation FID per token count k and CFG scale")
    _common(g)
    g.add_argument("--generator", required=True, help="a generator file (generator.save_params)")
    g.add_argument("--cfg_scales", type=float, nargs="+", default=[1.0])
    g.add_argument("--num_samples", type=int, default=1000)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top_k", type=int, default=0)
    g.add_argument("--top_p", type=float, default=1.0)
    g.add_argument("--reference", help="ADM-format npz with mu / sigma of the same feature network")
    _source_flags(g, required=False)
    g.add_argument("--num_reference", type=int, help="real reference images (default: --num_samples)")
    g.set_defaults(run=gfid_command)


def run_args(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed ``rfid`` / ``gfid`` command; bad input is one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flextok_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_args(args, f"flextok evaluate {args.command}")
