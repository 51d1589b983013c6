"""The defaults of every training config: the one place they are set.

``configs/*.py`` start from ``base_config()`` and change what their recipe changes; the training
code reads fields directly (no defaults at call sites). Every field is overridable from the
command line, e.g. ``--config.train.total_steps=1000``. Optional strings use typed placeholders
so that ``None`` defaults can still be overridden. The package never imports the repository's
``configs/`` folder: the benchmarks build their configs from the functions here.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from flextok_jax.parallel import DEFAULT_RULES, MESH_AXES

# FSQ levels of the released models: 8*8*8*5*5*5 = 64000 codes.
RELEASED_FSQ = (8, 8, 8, 5, 5, 5)


def transformer(depth: int, head_dim: int = 64, width_per_depth: int = 64) -> ml_collections.ConfigDict:
    """One trunk with the released aspect ratio: width = 64 * depth."""
    return ml_collections.ConfigDict(
        {"dim": width_per_depth * depth, "depth": depth, "head_dim": head_dim, "mlp_ratio": 4.0}
    )


def released_model(encoder_depth: int, decoder_depth: int) -> ml_collections.ConfigDict:
    """A released-size FlexTok at 256 px: standard 16-ch VAE (f=8), patch 2 -> 16x16 grid."""
    return ml_collections.ConfigDict(
        {
            "encoder": transformer(encoder_depth),
            "decoder": transformer(decoder_depth),
            "n_registers": 256,
            "fsq_levels": RELEASED_FSQ,
            "latent_channels": 16,
            "patch_size": (2, 2),
            "patch_grid": (16, 16),
            "vae": "standard",
            # Must equal the scaling of the pretrained VAE in train.vae_from (its metadata).
            "vae_scaling_factor": 0.88,
            "vae_shift_factor": 0.0,
            "max_timestep": 1.0,
            "repa_layer": 1,
        }
    )


def tiny_tokenizer_model() -> ml_collections.ConfigDict:
    """A pixel-space FlexTok for 32 px pictures: width 64, depth 2+2, 16 registers, patch 4."""
    # mlp_ratio 3 gives a SwiGLU hidden width of 128, divisible by any tensor-parallel size <= 8.
    return ml_collections.ConfigDict(
        {
            "encoder": {"dim": 64, "depth": 2, "head_dim": 32, "mlp_ratio": 3.0},
            "decoder": {"dim": 64, "depth": 2, "head_dim": 32, "mlp_ratio": 3.0},
            "n_registers": 16,
            "fsq_levels": (8, 5, 5, 5),
            # Pixel space: the "latents" are the RGB pixels themselves.
            "latent_channels": 3,
            "patch_size": (4, 4),
            "patch_grid": (8, 8),
            "vae": None,
            "vae_scaling_factor": 1.0,
            "vae_shift_factor": 0.0,
            "max_timestep": 1.0,
            "repa_layer": 0,
        }
    )


def base_config() -> ml_collections.ConfigDict:
    """Every section with defaults; the model section is filled in by each config file."""
    c = ml_collections.ConfigDict()
    # Which model trains: a name in flextok_jax.train.setup.TASKS.
    c.task = "tokenizer"
    c.model = ml_collections.ConfigDict()
    # Computation dtype of the transformer ('float32' or 'bfloat16'); params stay float32.
    c.dtype = "float32"

    c.data = ml_collections.ConfigDict(
        {
            "source": "procedural",
            "image_size": 256,
            "num_images": 10_000,
            "split": "train",
            # The held-out split of the end-of-run reconstructions (""): Fashion-MNIST's test split,
            # a tfds dataset's validation split; an image folder has one split, so give it a
            # slice the training split leaves out (split "train[:95%]", eval_split "train[95%:]").
            "eval_split": "",
            "folder": config_dict.placeholder(str),
            "data_dir": config_dict.placeholder(str),
            "name": config_dict.placeholder(str),
            "seed": 0,
            "worker_count": 0,
            "random_crop": True,
            "flip": True,
            # A token-dataset folder (flextok tokenize-dataset), for task='generator'.
            "tokens": config_dict.placeholder(str),
        }
    )

    c.optimizer = ml_collections.ConfigDict(
        {
            "lr": 1e-4,
            "end_lr_factor": 0.1,
            "warmup_steps": 5_000,
            "weight_decay": 0.05,
            "b1": 0.9,
            "b2": 0.99,
            "eps": 1e-8,
            "grad_clip": 1.0,
            "ema_decay": 0.9999,
        }
    )

    c.train = ml_collections.ConfigDict(
        {
            "global_batch_size": 512,
            "total_steps": 1_000_000,
            # Stop (with a checkpoint) after this step; the LR schedule still spans total_steps.
            "stop_at_step": config_dict.placeholder(int),
            "seed": 0,
            # 'uniform': keep_k ~ U{1..n}; 'pow2': keep_k ~ U{1, 2, 4, ..., n}.
            "nested_dropout": "pow2",
            "guidance_dropout": 0.1,
            "t_mean": 0.0,
            "t_std": 1.0,
            "repa_weight": 1.0,
            # Name in flextok_jax.train.repa.TEACHERS, or None for no REPA loss.
            "repa_teacher": config_dict.placeholder(str),
            # With repa_teacher='dinov2': a DINOv2 .safetensors (official torch key names).
            "repa_teacher_weights": config_dict.placeholder(str),
            "repa_hidden": 2048,
            # Weight of fsq.fsq_saturation on the encoder's FSQ inputs (0 = off): it keeps FSQ
            # dimensions out of tanh's flat tails, where they stop learning.
            "fsq_saturation_weight": 0.0,
            # Official FlexTok .safetensors to fine-tune from (its VAE is kept frozen).
            "init_from": config_dict.placeholder(str),
            # Pretrained VAE weights for training from scratch: a diffusers AutoencoderKL
            # .safetensors (prefix '') or an official FlexTok checkpoint (prefix 'vae.vae.').
            "vae_from": config_dict.placeholder(str),
            "vae_prefix": "",
            # Generator: the share of labels replaced by the null row (classifier-free guidance).
            "class_dropout": 0.1,
        }
    )

    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1), "axis_names": MESH_AXES})
    c.sharding = ml_collections.ConfigDict({"rules": tuple(DEFAULT_RULES)})
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 5_000, "keep": 3, "async": True})
    c.log = ml_collections.ConfigDict(
        {"every_steps": 100, "grid_every_steps": 5_000, "grid_images": 4, "grid_sample_steps": 25, "progress": True}
    )
    # After a run reaches total_steps, main tokenizes held-out images and reconstructs them from
    # k = 1, 2, 4, ... tokens (reconstructions.png, loss_curve.png, error per k).
    # guidance_scale: the decoder's CFG scale for every decode of the main job (reconstructions,
    # their scores, generated samples); 1 is no guidance.
    c.eval = ml_collections.ConfigDict({"enabled": True, "num_images": 8, "num_steps": 25, "guidance_scale": 1.0})
    c.stage2 = stage2_defaults()
    return c


def stage2_defaults(generator: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The main job's stage 2 (``flextok_jax.pipeline``): after the tokenizer, tokenize the
    training set, train ``generator`` (a task='generator' config) and score samples per k."""
    return ml_collections.ConfigDict({
        "enabled": False,
        "tokenize_batch_size": 256,
        "augment": (),  # extra token views per image: "flip", "crop"
        # Sampling of samples.png and the sample scores.
        "samples_per_class": 10,
        "cfg_scale": 3.0,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "decode_steps": 25,
        # Fashion-MNIST scores: classifier training steps, held-out test images.
        "classifier_steps": 1500,
        "eval_images": 1000,
        "generator": ml_collections.ConfigDict() if generator is None else generator,
        # The text stage (Fashion-MNIST only): a text-conditional generator (a task='text_generator'
        # config) on the same tokens with captions, scored on held-out paraphrases.
        "text": ml_collections.ConfigDict({
            "enabled": False,
            "samples_per_prompt": 4,
            "generator": ml_collections.ConfigDict(),
        }),
        # The adaptive stage: the first num_images training images tokenized to the fewest tokens
        # that meet `quality` (FlexTok.tokenize_adaptive), a generator with EOS trained on their
        # own lengths (a 'length'-bucketed task='generator' config), samples that stop by themselves.
        "adaptive": ml_collections.ConfigDict({
            "enabled": False,
            "quality": 0.16,  # mean squared distance of the trial decode to the image's latents
            "quality_steps": 2,  # Euler steps of the trial decodes
            "num_images": 10_000,
            "samples_per_class": 20,
            "generator": ml_collections.ConfigDict(),
        }),
    })


def imagenet_data(image_size: int = 256) -> ml_collections.ConfigDict:
    """ImageNet-1k train split from a prepared tfds ``imagenet2012`` (array_record)."""
    d = base_config().data
    d.source = "tfds"
    d.name = "imagenet2012"
    d.split = "train"
    d.image_size = image_size
    d.worker_count = 8
    return d


def generator_model(depth: int, num_classes: int = 1000, vocab_size: int = 64_000, max_tokens: int = 256,
                    dim: int | None = None, num_heads: int | None = None, head_dim: int = 64) -> ml_collections.ConfigDict:
    """A generator of the FlexTok AR family: depth L, width 64 L, L heads of 64 (by default)."""
    return ml_collections.ConfigDict({
        "vocab_size": vocab_size, "max_tokens": max_tokens, "num_classes": num_classes, "depth": depth,
        "dim": 64 * depth if dim is None else dim, "num_heads": depth if num_heads is None else num_heads,
        "head_dim": head_dim, "mlp_ratio": 4.0, "qk_norm": True,
    })


def generator_base_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """base_config for task='generator': the AR recipe of LlamaGen / FlexTok (AdamW 0.9/0.95,
    weight decay 0.05, clip 1.0, warmup + cosine, class dropout 0.1)."""
    c = base_config()
    del c["stage2"]  # a generator run has no stage after it
    c.task = "generator"
    c.model = model
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip = 1.0
    c.optimizer.lr = 1e-4
    c.log.grid_every_steps = 0
    c.eval.enabled = False
    # Length-bucketed batches (flextok_jax.data.token_buckets): each step trains one bucket of one
    # sequence length, its batch sized so that every step holds ~tokens_per_step tokens.
    c.data.buckets = ml_collections.ConfigDict({
        "enabled": False,
        # 'prefix': every record trains at every bucket length (its first L tokens);
        # 'length': a record trains at its own length (tokenize-dataset --quality) + EOS (model.eos).
        "mode": "prefix",
        "lengths": (8, 16, 32, 64, 128, 256),  # at most model.max_tokens
        "tokens_per_step": 0,  # 0: train.global_batch_size * model.max_tokens
        "weights": config_dict.placeholder(tuple),  # per bucket; None: equal ('prefix'), by records ('length')
        "curriculum_steps": 0,  # > 0: the buckets open shortest first over these many steps
        "tolerance": 0.1,  # the largest relative miss of a bucket's tokens per step
    })
    return c


def text_generator_base_config(model: ml_collections.ConfigDict, text_dim: int = 384,
                               max_text_tokens: int = 32) -> ml_collections.ConfigDict:
    """``generator_base_config`` for task='text_generator' (captioned Fashion-MNIST tokens):
    ``model`` becomes a text model (condition 'text', no class table, MiniLM's 384-wide
    features in ``max_text_tokens`` slots); ``train.class_dropout`` is the null-prefix rate."""
    model = ml_collections.ConfigDict(model.to_dict())
    model.num_classes = 0
    model.condition = "text"
    model.text_dim = text_dim
    model.max_text_tokens = max_text_tokens
    c = generator_base_config(model)
    c.task = "text_generator"
    # 'templates': Fashion-MNIST class captions drawn per step (flextok_jax.text.captions);
    # 'records': each record's own caption (tokenize-dataset --caption_key).
    c.data.captions = "templates"
    return c


LAUNCH_DOC = """{title}

Launch (one host; multi-host: the same command on every host, with JAX's distributed env vars set):

    python -m flextok_jax.main --config configs/{name}.py --workdir /ckpt/{name}{extra_flags}

Data: {data}
Expect: {expect}
Resuming is automatic: run the same command again.
"""

RELEASED_EXPECT = (
    "a loss around 1 at step 0 that drops quickly, metrics in WORKDIR/metrics.jsonl and\n"
    "TensorBoard in WORKDIR/tb, a reconstruction grid PNG (originals, then k = 1, 2, 4, ... 256 tokens)\n"
    "every log.grid_every_steps, checkpoints in WORKDIR/checkpoints every checkpoint.every_steps."
)


def launch_doc(name: str, title: str, data: str, expect: str = RELEASED_EXPECT,
               extra_flags: str = " \\\n        --config.train.vae_from=/weights/flextok_vae.safetensors") -> str:
    """The docstring of a config file: what it trains, the launch command, the data, the
    expected result (one template for every config)."""
    return LAUNCH_DOC.format(title=title, name=name, extra_flags=extra_flags, data=data, expect=expect)


def released_recipe(encoder_depth: int, decoder_depth: int, total_steps: int = 200_000) -> ml_collections.ConfigDict:
    """The ImageNet-256 training recipe of the released sizes (bf16 compute, batch 1024)."""
    c = base_config()
    c.model = released_model(encoder_depth=encoder_depth, decoder_depth=decoder_depth)
    c.dtype = "bfloat16"
    c.data = imagenet_data(256)
    c.train.global_batch_size = 1024
    c.train.total_steps = total_steps
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 5_000
    c.checkpoint.every_steps = 2_500
    return c


def generator_launch_doc(name: str, title: str) -> str:
    """``launch_doc`` of a generator config trained on an ImageNet token dataset."""
    return launch_doc(
        name, title,
        data="a token dataset of imagenet2012 (--config.data.tokens=DIR, written by `flextok tokenize-dataset`).",
        expect="next-token loss falling from ln(64000) = 11.1, loss per position band in metrics.jsonl,\n"
               "checkpoints every checkpoint.every_steps; the EMA weights in WORKDIR/export/generator.safetensors.",
        extra_flags=" \\\n        --config.data.tokens=/data/imagenet_tokens",
    )


def generator_recipe(depth: int, total_steps: int = 300_000) -> ml_collections.ConfigDict:
    """The ImageNet-256 class-conditional AR recipe of the FlexTok AR family (depth L, width
    64 L, L heads; 256 tokens of the released 64,000-id FSQ; batch 256, lr 4e-4 as LlamaGen)."""
    c = generator_base_config(generator_model(depth))
    c.dtype = "bfloat16"
    c.train.global_batch_size = 256
    c.train.total_steps = total_steps
    c.optimizer.lr = 4e-4
    c.optimizer.warmup_steps = 5_000
    c.checkpoint.every_steps = 5_000
    return c
