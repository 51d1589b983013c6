"""Every config in configs/ loads, accepts overrides and builds a valid FlexTokConfig."""
from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from helpers import REPO

from flextok_jax import pipeline
from flextok_jax.generator import GeneratorConfig
from flextok_jax.model.config import FlexTokConfig, from_configdict
from flextok_jax.model.flextok import FlexTok

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")
SECTIONS = ("model", "data", "optimizer", "train", "mesh", "sharding", "checkpoint", "log")


def _param_counts(config: FlexTokConfig) -> dict[str, int]:
    shapes = jax.eval_shape(FlexTok(config).init, jax.random.key(0))
    return {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in shapes.items()}


def test_all_configs_present():
    assert {"flextok_d12_d12_in1k", "flextok_d18_d18_in1k", "flextok_d18_d28_in1k", "flextok_d18_d28_dfn",
            "tiny_cpu"} <= set(CONFIGS)
    assert {f"generator_d{d}_in1k" for d in (10, 12, 16, 20, 24, 30)} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    module = importlib.import_module(f"configs.{name}")
    assert "python -m flextok_jax.main --config configs/" in module.__doc__
    config = module.get_config()
    for section in SECTIONS:
        assert section in config, f"{name} lacks config.{section}"
    if config.task == "generator":
        cfg = GeneratorConfig.from_dict(config.model.to_dict())
        assert cfg.dim == 64 * cfg.depth and cfg.num_heads == cfg.depth and cfg.vocab_size == 64000
        return
    if config.task == "text_generator":
        cfg = GeneratorConfig.from_dict(config.model.to_dict())
        assert cfg.condition == "text" and cfg.text_dim == 384 and cfg.num_classes == 0
        return
    model_config = from_configdict(config.model)
    assert model_config.image_size == (config.data.image_size,) * 2
    assert config.train.nested_dropout in ("uniform", "pow2")
    counts = _param_counts(model_config)
    assert counts["encoder"] > 0 and counts["decoder"] > 0


def test_released_sizes():
    config = importlib.import_module("configs.flextok_d12_d12_in1k").get_config()
    counts = _param_counts(from_configdict(config.model))
    total = counts["encoder"] + counts["decoder"]
    assert 150e6 < total < 400e6, counts
    d18_d28 = from_configdict(importlib.import_module("configs.flextok_d18_d28_in1k").get_config().model)
    assert d18_d28.decoder.dim == 64 * 28 and d18_d28.encoder.dim == 64 * 18
    assert d18_d28.n_registers == 256 and d18_d28.patch_grid == (16, 16) and d18_d28.vae_downsample == 8


def test_command_line_overrides(monkeypatch):
    argv = [
        "prog", f"--config={REPO / 'configs' / 'tiny_cpu.py'}", "--config.train.total_steps=7",
        "--config.mesh.shape=(2,2,2)", "--config.train.repa_teacher=pixel_patches",
        "--config.train.stop_at_step=3", "--config.model.encoder.depth=1",
    ]
    # config_flags reads the override names from sys.argv when the flag is defined.
    monkeypatch.setattr("sys.argv", argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv)
    fv(argv)
    c = fv.config
    assert c.train.total_steps == 7 and tuple(c.mesh.shape) == (2, 2, 2)
    assert c.train.repa_teacher == "pixel_patches" and c.train.stop_at_step == 3
    assert from_configdict(c.model).encoder.depth == 1


def test_tiny_cpu_text_stage_argument(tmp_path):
    tiny_cpu = importlib.import_module("configs.tiny_cpu")
    assert not tiny_cpu.get_config().stage2.text.enabled
    c = tiny_cpu.get_config("text")
    assert c.stage2.text.enabled and c.stage2.text.generator.task == "text_generator"
    t, g = c.stage2.text.generator, c.stage2.generator
    assert GeneratorConfig.from_dict(t.model.to_dict()).condition == "text"
    assert (t.model.depth, t.model.dim, t.model.max_tokens) == (g.model.depth, g.model.dim, g.model.max_tokens)
    t.train.total_steps = 7  # the text generator's sections are copies: the class generator keeps its own
    assert g.train.total_steps == 800
    with pytest.raises(ValueError, match="':text'"):
        tiny_cpu.get_config("txt")
    # Captions name Fashion-MNIST classes: another source is refused before anything trains.
    c.data.source = "procedural"
    with pytest.raises(ValueError, match="data.source='fashion_mnist'"):
        pipeline.run(c, tmp_path)
    assert not any(tmp_path.iterdir())


def test_text_generator_dfn_sizes():
    module = importlib.import_module("configs.text_generator_dfn")
    for size, depth in (("d10", 10), ("d16", 16), ("d30", 30)):
        c = module.get_config(size)
        cfg = GeneratorConfig.from_dict(c.model.to_dict())
        assert (cfg.depth, cfg.dim, cfg.num_heads, cfg.condition, cfg.max_tokens) == (depth, 64 * depth, depth, "text", 256)
        assert c.data.captions == "records" and c.task == "text_generator" and c.train.global_batch_size == 256
    assert module.get_config().model.depth == 20
    with pytest.raises(ValueError, match="one of"):
        module.get_config("d13")
