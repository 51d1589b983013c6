"""The main job: a tiny pixel-space FlexTok and a tiny AR generator on Fashion-MNIST, on 2 CPU cores.

Launch:

    python -m flextok_jax.main --config configs/tiny_cpu.py --workdir /tmp/flextok_tiny

Expect: the tokenizer (32 px, width 128, depth 2+2, 16 registers, FSQ 1000 ids) trains 3000 steps
at batch 32 (flow loss 1.56 -> 0.136), 8 held-out test images are reconstructed from k = 1, 2, 4,
8, 16 tokens with decoder guidance 3 (WORKDIR/reconstructions.png, loss_curve.png; MSE 0.217 at
k=1, 0.140 at k=16), the 60,000 training images are tokenized (WORKDIR/tokens), the generator
(depth 4, width 128) trains 800 steps at batch 64 (loss 1.82 at the end), and WORKDIR/samples.png
shows one sample per class at each k. A classifier trained in the run (91.4% on test images)
scores reconstructions 61.2% (k=1), 65.1% (k=2) .. 68.4% (k=16) and samples 75% .. 78%;
FID-FMNIST of the reconstructions 24.4 (k=1) .. 21.8 (k=16) (WORKDIR/stage2.json). Measured:
10.05 min wall on 2 CPU cores (1,025 CPU-seconds), with the huge-page tunable of
flextok_jax/huge_pages.py (the t_mean 1.0 config: 9.4 min with it, 10.3 min without, same day).
Rerunning the command resumes every stage.

With ``configs/tiny_cpu.py:text`` (after the main job, same WORKDIR; 2.3 min more; measured with
the t_mean 1.0 tokenizer): the text-conditional generator trains 800 steps on the same tokens with
template captions, and WORKDIR/text_samples.png shows samples for held-out paraphrases; the
classifier assigns them to the class the prompt names 75% (k=1) .. 83% (k=16)
(WORKDIR/text_stage.json).

With ``configs/tiny_cpu.py:adaptive`` (after the main job, same WORKDIR; 4.6 min more; measured
with the t_mean 1.0 tokenizer): the first 10,000 training images get their fewest tokens within
distance 0.16 (mean k 3.5: sneakers 1.7 .. bags 6.7), the generator with EOS trains 1,600 steps on
those lengths, and its samples stop by themselves after 3.6 tokens on average, following the
classes (WORKDIR/adaptive_samples.png, adaptive_lengths.png, adaptive_stage.json); on 1,000
held-out images the adaptive k meets the target as often as k = 16 (86.3% vs 85.7%) with 12.6
fewer tokens per image.
"""
import copy

from flextok_jax.train import config as common


def get_config(arg: str | None = None):
    """``arg``: None, "text" to add the text stage (``configs/tiny_cpu.py:text``) or "adaptive" to
    add the adaptive-length stage (``configs/tiny_cpu.py:adaptive``)."""
    if arg not in (None, "", "text", "adaptive"):
        raise ValueError(f"configs/tiny_cpu.py takes no argument, ':text' or ':adaptive', got {arg!r}")
    c = common.base_config()
    c.model = common.tiny_tokenizer_model()
    # Width 128 (4 heads of 32) instead of 64: reconstruction accuracy at k=16 doubles (30% -> 60%
    # on 300 test images, guidance 3).
    c.model.encoder.dim = 128
    c.model.decoder.dim = 128
    c.data.source = "fashion_mnist"
    c.data.image_size = 32
    c.data.random_crop = False
    c.data.flip = True
    c.train.global_batch_size = 32
    c.train.total_steps = 3_000
    c.train.nested_dropout = "pow2"
    # High-noise times are where the decoder must read the tokens: with the default logit-normal
    # (0, 1) it learns to ignore them on Fashion-MNIST (flow loss with 16 tokens = without any).
    # On 1,000 test images at k=16 after 1,000 steps: 49.3% at t_mean 1.0, 55.4% at 1.5 and 2.0
    # (k=1: 40.4, 46.8, 52.7%); after 3,000 steps 65.5% (1.0) -> 68.4% (2.0).
    c.train.t_mean = 2.0
    c.train.t_std = 1.5
    c.train.repa_hidden = 64
    # Without it FSQ dimensions drift into tanh's flat tails and stop learning (after 1,000 steps
    # one of the 4 dimensions was stuck at one level at all 16 positions); on 1,000 test images
    # after 1,000 steps, reconstructions at k=16 scored 30% (weight 0), 43% (1), 49% (10), 31% (100).
    c.train.fsq_saturation_weight = 10.0
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.0
    c.optimizer.ema_decay = 0.99
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 2
    c.log.every_steps = 10
    c.log.grid_every_steps = 1_000
    c.log.grid_sample_steps = 10
    # Decoder guidance for the pictures and scores (the tokenizer trains with guidance dropout 0.1).
    c.eval.guidance_scale = 3.0

    # Stage 2: a class-conditional generator over the tokenizer's 16 ids per image.
    g = common.generator_base_config(common.generator_model(
        depth=4, num_classes=10, vocab_size=1000, max_tokens=16, dim=128, num_heads=2, head_dim=64))
    g.train.global_batch_size = 64
    g.train.total_steps = 800
    g.optimizer.lr = 1e-3
    g.optimizer.warmup_steps = 100
    g.optimizer.ema_decay = 0.99
    g.checkpoint.every_steps = 500
    g.checkpoint.keep = 2
    g.log.every_steps = 50
    c.stage2 = common.stage2_defaults(g)
    c.stage2.enabled = True
    c.stage2.classifier_steps = 1_400
    # 10 Euler steps per decode of the scores and samples: on 300 test images at k=16, 10, 25 and
    # 50 steps score the same.
    c.stage2.decode_steps = 10

    # The text stage: the same generator with a MiniLM prompt prefix (16 text slots) instead of
    # the class row, trained on the same tokens with template captions.
    t = common.text_generator_base_config(g.model, max_text_tokens=16)
    for section in ("train", "optimizer", "checkpoint", "log"):
        t[section] = copy.deepcopy(g[section])  # a copy: overriding one must not change the other
    c.stage2.text.generator = t
    c.stage2.text.enabled = arg == "text"

    # The adaptive stage: the same generator with EOS, trained on 10,000 training images at their
    # own lengths (the fewest of 1, 2, 4, 8, 16 tokens within the quality target), one bucket per
    # length at ~1,024 positions per step. 1,600 steps: after 800 the samples ran long (mean k
    # 8.4 without guidance against the data's 5.8), after 1,600 they matched (6.2; measured with
    # the 2,000-step tokenizer).
    a = copy.deepcopy(g)
    a.train.total_steps = 1_600
    a.model.eos = True
    a.data.buckets.enabled = True
    a.data.buckets.mode = "length"
    a.data.buckets.lengths = (1, 2, 4, 8, 16)
    c.stage2.adaptive.generator = a
    c.stage2.adaptive.enabled = arg == "adaptive"
    return c
