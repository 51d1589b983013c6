"""The main job's tiny tokenizer (32 px, 16 registers) on a folder of photo crops: tokens saved at equal quality on photos.

Launch (PHOTOS: any folder of photos; the numbers below are from the 17 sample photos that
scikit-image 0.26, scikit-learn 1.9 and matplotlib ship: astronaut, brick, camera, chelsea,
coffee, coins, grass, gravel, hubble_deep_field, ihc, moon, motorcycle_left, retina, rocket;
china, flower; grace_hopper):

    python -m flextok_jax.benchmarks.photo_crops --photos PHOTOS --out CROPS \\
        --train_crops 3000 --test_crops 250 --test chelsea coffee gravel rocket
    python -m flextok_jax.main --config configs/tiny_photos.py --workdir workdir/photos \\
        --config.data.folder=CROPS/train --config.data.data_dir=CROPS/tfds
    python -m flextok_jax.benchmarks.tokens_saved --tokenizer workdir/photos/export/flextok.safetensors \\
        --images CROPS/test --quality 0.02 0.04 0.08

Expect: see the README's "Tokens saved at equal quality" (measured there, with the embedded default).
The end-of-run reconstructions (WORKDIR/reconstructions.png) are of crops training left out
(data.eval_split) of the training photos; the tokens-saved benchmark reads the crops of the four
photos training never saw.
"""
from configs import tiny_cpu


def get_config():
    c = tiny_cpu.get_config()
    c.data.source = "image_folder"
    c.data.split = "train[:98%]"
    c.data.eval_split = "train[98%:]"
    c.stage2.enabled = False  # no classes to generate
    return c
