"""Timing of one compiled train step of any task, for ``python -m flextok_jax.benchmarks train``."""
from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from flextok_jax.benchmarks.timing import compiled_flops, median_seconds
from flextok_jax.train import config as train_config
from flextok_jax.train.setup import TrainSetup

# The benchmark's tokenizer configs, built in the package (never from the repository's configs/).
TOKENIZER_CONFIGS = {
    "tiny": lambda: _tiny_tokenizer(),
    "d12": lambda: train_config.released_recipe(encoder_depth=12, decoder_depth=12),
}


def _tiny_tokenizer() -> ml_collections.ConfigDict:
    c = train_config.base_config()
    c.model = train_config.tiny_tokenizer_model()
    c.data.image_size = 32
    return c


def benchmark_train_step(config: ml_collections.ConfigDict, batch: dict[str, Any], steps: int = 10,
                         devices: Any = None) -> dict[str, float]:
    """Time the jitted train step of ``config`` on its mesh (all local devices by default).

    batch: this process's host batch for the task (e.g. {"image": [B, H, W, 3]}). Returns
    step_s (median of ``steps`` timed steps after one warm-up step), flops_per_step (XLA cost
    analysis, summed over devices; nan if unavailable), compile_s and num_params (trainable).
    """
    setup = TrainSetup.from_config(config, devices=devices)
    state = setup.init_state()
    gbatch = setup.global_batch(batch)
    t0 = time.perf_counter()
    compiled = setup.step.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t0

    def run() -> Any:
        nonlocal state  # donated: every step consumes the previous state
        state, metrics = compiled(state, gbatch)
        return metrics

    step_s = median_seconds(run, steps, budget_s=float("inf"))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {
        "step_s": step_s,
        "flops_per_step": compiled_flops(compiled),
        "compile_s": compile_s,
        "num_params": float(num_params),
    }


def random_images(config: ml_collections.ConfigDict, batch: int) -> dict[str, np.ndarray]:
    s = int(config.data.image_size)
    return {"image": np.random.default_rng(0).uniform(-1, 1, (batch, s, s, 3)).astype(np.float32)}
