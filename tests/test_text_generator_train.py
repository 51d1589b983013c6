"""Captioned Fashion-MNIST and the text generator's training task: the caption set, its held-out
paraphrases, the precomputed MiniLM features, and a loss that falls through ``train.train`` on a
token dataset written by `flextok tokenize-dataset` (``helpers.write_procedural_token_dataset``)."""
from __future__ import annotations

import math
import os

import ml_collections
import numpy as np
import pytest
from helpers import N_TOKENS, VOCAB, losses, write_procedural_token_dataset

from flextok_jax import generator
from flextok_jax.text import captions as C
from flextok_jax.train import train
from flextok_jax.train import config as common
from flextok_jax.train.generator_task import EXPORT_FILE
from flextok_jax.train.setup import make_task

SLOTS = 16


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    return write_procedural_token_dataset(tmp_path_factory.mktemp("text_tokens"))


@pytest.fixture(scope="module")
def minilm():
    from flextok_jax import text

    return text.MiniLM.from_pretrained()


def text_config(token_dir: str, steps: int) -> ml_collections.ConfigDict:
    c = common.text_generator_base_config(common.generator_model(
        depth=2, num_classes=0, vocab_size=VOCAB, max_tokens=N_TOKENS, dim=64, num_heads=2, head_dim=32),
        max_text_tokens=SLOTS)
    c.data.tokens = token_dir
    c.train.global_batch_size = 16
    c.train.total_steps = steps
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 5
    c.log.every_steps = 1
    c.log.progress = False
    c.checkpoint.every_steps = steps
    c.checkpoint["async"] = False
    return c


def test_caption_table_and_held_out_paraphrases():
    captions, ids = C.caption_table()
    assert ids.shape == (10, len(C.TRAIN_TEMPLATES)) and len(captions) == ids.max() + 1
    assert captions[ids[7, 1]] == "a photo of a sneaker"
    assert captions[ids[4, 0]] == "a coat" and captions[ids[9, 7]] == "footwear: ankle boot"
    held_out, _ = C.caption_table(C.HELD_OUT_TEMPLATES)
    assert "an image showing an ankle boot" in held_out
    assert not set(held_out) & set(captions)  # training never sees a held-out caption
    with pytest.raises(ValueError, match="label"):
        C.caption(10, C.TRAIN_TEMPLATES[0])


def test_text_generator_task_precomputes_caption_features(token_dir, minilm):  # noqa: F811
    task = make_task(text_config(token_dir, 2))
    task._encoder = minilm  # the fixture's encoder, so the weights load once
    feats = task.pretrained()["captions"]
    n = len(task.captions)
    assert feats["tokens"].shape == (n, SLOTS, 384) and feats["pooled"].shape == (n, 384)
    np.testing.assert_allclose(np.linalg.norm(feats["pooled"], axis=1), 1.0, atol=1e-5)
    lengths = feats["mask"].sum(1)
    assert lengths.min() >= 3 and lengths.max() < SLOTS  # [CLS] word [SEP] .. no caption cut
    # Features are cached: a second call does not run the encoder again.
    assert task.pretrained()["captions"] is feats
    assert task.metadata()["held_out_templates"] == list(C.HELD_OUT_TEMPLATES)


def test_text_generator_loss_falls_through_train(token_dir, minilm, tmp_path, monkeypatch):  # noqa: F811
    from flextok_jax.text import encoder as encoder_module

    monkeypatch.setattr(encoder_module.MiniLM, "from_pretrained", classmethod(lambda cls, *a, **k: minilm))
    steps = 60
    train(text_config(token_dir, steps), tmp_path)
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, steps + 1))
    assert abs(got[1] - math.log(VOCAB)) < 0.05, got[1]  # zero head: uniform over 200 ids
    last = np.mean([got[s] for s in range(steps - 9, steps + 1)])
    print(f"text generator loss {got[1]:.3f} -> {last:.3f}")
    assert last < 0.85 * math.log(VOCAB), last
    gen, params = generator.load_generator(os.path.join(tmp_path, "export", EXPORT_FILE))
    assert gen.config.condition == "text" and "text_proj" in params and "captions" not in params


def test_text_generator_step_same_on_a_sharded_mesh(token_dir, minilm):  # noqa: F811
    """The caption table (frozen, replicated) and the text parameters under fsdp x tensor
    sharding: two steps on a (2, 2, 2) mesh give the one-device metrics."""
    import jax

    from flextok_jax.train import TrainSetup
    from flextok_jax.train.text_generator_task import TextGeneratorTask

    history = {}
    for shape in ((1, 1, 1), (2, 2, 2)):
        config = text_config(token_dir, 2)
        config.optimizer.warmup_steps = 0
        config.optimizer.eps = 1e-6  # as test_generator_train: Adam's first step magnifies rounding
        config.mesh.shape = shape
        task = TextGeneratorTask(config, encoder=minilm)
        setup = TrainSetup.from_config(config, task=task, devices=jax.devices()[: int(np.prod(shape))])
        batches, state = iter(task.dataset()), setup.init_state()
        np.testing.assert_array_equal(np.asarray(state.frozen["captions"]["pooled"]),
                                      task.caption_features()["pooled"])
        history[shape] = []
        for _ in range(2):
            state, metrics = setup.run_step(state, next(batches))
            history[shape].append({k: float(metrics[k]) for k in ("loss", "accuracy", "grad_norm")})
    for got, want in zip(history[(2, 2, 2)], history[(1, 1, 1)]):
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=k)


def test_text_conditioning_is_learned_and_follows_held_out_paraphrases(minilm):
    """Tokens whose first id is 5 * label: 150 Adam steps of the task's loss (training captions,
    null prefix at 0.1) make token 0 predictable from the caption, also from the held-out
    paraphrases, and not from the null prefix (ln 10 = 2.30: ten classes)."""
    import jax
    import jax.numpy as jnp
    import optax

    from flextok_jax.generator import TextCondition
    from flextok_jax.train.text_generator_task import TextGeneratorTask

    c = common.text_generator_base_config(common.generator_model(
        depth=2, num_classes=0, vocab_size=64, max_tokens=4, dim=64, num_heads=2, head_dim=32), max_text_tokens=SLOTS)
    task = TextGeneratorTask(c, encoder=minilm)
    gen, params = task.gen, task.gen.init(jax.random.key(0))
    frozen = {"captions": {k: jnp.asarray(v) for k, v in task.caption_features().items()}}
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch, rng):
        grads = jax.grad(lambda p: task.loss(p, frozen, batch, rng)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    data = np.random.default_rng(0)

    def batch(n: int) -> dict:
        labels = data.integers(0, 10, n).astype(np.int32)
        tokens = data.integers(0, 64, (n, 4)).astype(np.int32)
        tokens[:, 0] = 5 * labels
        return {"tokens": jnp.asarray(tokens), "label": jnp.asarray(labels)}

    for i in range(150):
        params, opt = step(params, opt, batch(64), jax.random.key(i))
    test = batch(200)

    def first_token_loss(cond) -> float:
        _, m = generator.next_token_loss(gen, params, cond, test["tokens"], jax.random.key(0), class_dropout=0.0)
        return float(m["loss/pos_001"])

    null = first_token_loss(TextCondition.null_prompts(200, gen.config))
    results = {}
    for name, templates in (("train", C.TRAIN_TEMPLATES[1:2]), ("held-out", C.HELD_OUT_TEMPLATES)):
        captions, ids = C.caption_table(templates)
        feats = C.caption_features(minilm, captions, SLOTS)
        for j, template in enumerate(templates):
            rows = ids[np.asarray(test["label"]), j]
            cond = TextCondition(tokens=jnp.asarray(feats["tokens"][rows]), mask=jnp.asarray(feats["mask"][rows] > 0),
                                 pooled=jnp.asarray(feats["pooled"][rows]), null=jnp.zeros(200, bool))
            results[f"{name}: {template}"] = first_token_loss(cond)
    print(f"first-token loss: null {null:.3f}, " + ", ".join(f"{k!r} {v:.3f}" for k, v in results.items()))
    assert null > 0.9 * math.log(10), null
    for name, loss in results.items():
        assert loss < 0.1 * math.log(10), (name, loss)
