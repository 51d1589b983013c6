"""The generator's parameters (shapes, logical names, sizes), causality, dtype and sharding."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flextok_jax import generator, parallel
from flextok_jax.benchmarks.models import random_params

VOCAB = 16
# The generator's new logical names mapped onto the mesh (parallel.DEFAULT_RULES has the rest).
GENERATOR_RULES = parallel.DEFAULT_RULES  # they name the generator's axes too


@pytest.fixture(scope="module")
def tiny():
    gen = generator.Generator(generator.preset("tiny", vocab_size=VOCAB))
    return gen, random_params(gen, seed=0)


def test_init_shapes_logical_names_and_zero_head():
    cfg = generator.preset("tiny", vocab_size=VOCAB)
    gen = generator.Generator(cfg)
    params = gen.init(jax.random.key(0))
    flat = traverse_util.flatten_dict(params, sep="/")
    specs = {k: tuple(v) for k, v in traverse_util.flatten_dict(
        gen.logical_specs(), sep="/", is_leaf=lambda _, x: not isinstance(x, dict)).items()}
    assert flat.keys() == specs.keys()
    for key, value in flat.items():
        assert value.dtype == jnp.float32, key
        assert len(specs[key]) == value.ndim and all(specs[key]), (key, specs[key])
    assert flat["token_embed/embedding"].shape == (VOCAB, cfg.dim)
    assert specs["token_embed/embedding"] == ("vocab", "embed")
    assert flat["class_embed/embedding"].shape == (cfg.num_classes + 1, cfg.dim)
    assert specs["class_embed/embedding"] == ("classes", "embed")
    assert flat["pos_embed"].shape == (cfg.max_tokens, cfg.dim)
    assert specs["pos_embed"] == ("positions", "embed")
    assert specs["head/kernel"] == ("embed", "vocab")
    assert not np.any(flat["head/kernel"])  # zero head: the first step predicts uniformly
    names = {name for spec in specs.values() for name in spec}
    assert names == {"embed", "heads", "mlp", "vocab", "classes", "positions", "norm"}
    assert not any("bias" in key for key in flat)
    boxed = gen.init_boxed(jax.random.key(0))
    assert isinstance(boxed["head"]["kernel"], nn.LogicallyPartitioned)


def test_preset_sizes_and_parameter_counts():
    counts = {}
    for depth in generator.AR_DEPTHS:
        cfg = generator.preset(f"d{depth}")
        assert (cfg.dim, cfg.num_heads, cfg.head_dim, cfg.vocab_size) == (64 * depth, depth, 64, 64000)
        shapes = jax.eval_shape(generator.Generator(cfg).init, jax.random.key(0))
        flat = traverse_util.flatten_dict(shapes, sep="/")
        trunk = sum(int(np.prod(v.shape)) for k, v in flat.items() if k.startswith(("blocks_", "final_norm")))
        assert generator.non_embedding_params(cfg) == trunk
        counts[depth] = trunk
    assert 45e6 < counts[10] < 55e6 and 1.25e9 < counts[30] < 1.4e9, counts


def test_logits_are_causal_and_float32(tiny):
    gen, params = tiny
    labels = jnp.array([1, 2])
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, VOCAB)
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % VOCAB)
    a, b = gen.logits(params, labels, tokens), gen.logits(params, labels, changed)
    assert a.shape == (2, 12, VOCAB) and a.dtype == jnp.float32
    # logits[:, t] sees tokens[:, :t] only: positions <= 7 cannot see a change from 7 on.
    np.testing.assert_array_equal(a[:, :8], b[:, :8])
    assert np.abs(a[:, 8:] - b[:, 8:]).min(axis=-1).max() > 0
    # ... and the class: every position depends on it.
    c = gen.logits(params, jnp.array([3, 2]), tokens)
    assert np.all(np.abs(a[0] - c[0]).max(axis=-1) > 0)


def test_bfloat16_compute_gives_float32_logits_close_to_float32(tiny):
    gen, params = tiny
    gen_bf16 = generator.Generator(gen.config.replace(dtype="bfloat16"))
    labels, tokens = jnp.array([4, 10]), jax.random.randint(jax.random.key(2), (2, 16), 0, VOCAB)
    full, half = gen.logits(params, labels, tokens), gen_bf16.logits(params, labels, tokens)
    assert half.dtype == jnp.float32
    assert 0 < np.abs(full - half).max() < 0.1 * np.abs(full).max()


def test_sharded_logits_equal_one_device(tiny):
    gen, params = tiny
    mesh = parallel.make_mesh((2, 2, 2))
    sharded = parallel.shard_params(params, gen.logical_specs(), mesh, GENERATOR_RULES)
    assert "tensor" in str(sharded["head"]["kernel"].sharding.spec)
    assert "tensor" in str(sharded["token_embed"]["embedding"].sharding.spec)
    labels = jnp.array([0, 5, 9, 10])
    tokens = jax.random.randint(jax.random.key(3), (4, 16), 0, VOCAB)
    logits = parallel.MeshJit(gen.logits, mesh, GENERATOR_RULES)
    got = logits(sharded, jax.device_put(labels, parallel.batch_sharding(mesh)),
                 jax.device_put(tokens, parallel.batch_sharding(mesh)))
    np.testing.assert_allclose(got, gen.logits(params, labels, tokens), rtol=0, atol=1e-5)


def test_row_dense_equals_dense_on_any_leading_shape():
    """``layers.RowDense`` (the matmul over flattened rows) has nn.Dense's parameters and result,
    forward and backward, for 2-, 3- and 4-D inputs."""
    from flextok_jax.model.layers import RowDense

    for shape in ((5, 12), (2, 7, 12), (2, 3, 4, 12)):
        x = jax.random.normal(jax.random.key(len(shape)), shape)
        row, ref = RowDense(9, use_bias=True), nn.Dense(9, use_bias=True)
        p = row.init(jax.random.key(1), x)
        assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, ref.init(jax.random.key(1), x))
        out = row.apply(p, x)
        assert out.shape == shape[:-1] + (9,)
        np.testing.assert_allclose(out, ref.apply(p, x), rtol=1e-6, atol=1e-6)
        g_row, g_ref = (jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) ** 2), argnums=(0, 1))(p, x) for m in (row, ref))
        for a, b in zip(jax.tree.leaves(g_row), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
