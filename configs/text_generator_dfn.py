"""Text-conditional FlexTok AR generator of the paper sizes (depth L in 10, 12, 16, 20, 24, 30, width 64 L, L heads; default d20) over 256 tokens of the flextok_d18_d28_dfn tokenizer, with each image's own caption as a MiniLM prefix (32 text slots)."""
from flextok_jax.generator.config import AR_DEPTHS
from flextok_jax.train import config as common

__doc__ = common.launch_doc(
    "text_generator_dfn", __doc__,
    data="a captioned token dataset: image-text pairs (an image folder with captions.jsonl or sidecar .txt files,\n"
         "or a tfds dataset with a text feature) tokenized by flextok_d18_d28_dfn with\n"
         "`flextok tokenize-dataset --checkpoint EPFL-VILAB/flextok_d18_d28_dfn ... --caption_key caption`;\n"
         "pick the size with configs/text_generator_dfn.py:d12 (any of d10 d12 d16 d20 d24 d30).",
    expect="next-token loss falling from ln(64000) = 11.07; the EMA weights in WORKDIR/export/generator.safetensors,\n"
           "for `flextok generate --generator ... --prompt \"...\"`.",
    extra_flags=" \\\n        --config.data.tokens=/data/dfn_tokens",
)


def get_config(arg: str | None = None):
    size = arg or "d20"
    if not (size.startswith("d") and size[1:].isdigit() and int(size[1:]) in AR_DEPTHS):
        raise ValueError(f"configs/text_generator_dfn.py:SIZE takes one of {[f'd{d}' for d in AR_DEPTHS]}, got {arg!r}")
    recipe = common.generator_recipe(depth=int(size[1:]))
    c = common.text_generator_base_config(recipe.model, max_text_tokens=32)
    for section in ("train", "optimizer", "checkpoint"):
        c[section] = recipe[section]
    c.dtype = recipe.dtype
    c.data.captions = "records"
    return c
