"""``Generator``: parameters, teacher-forced logits and the KV-cache pieces of the AR generator.

Parameters are a plain pytree (the contents of the linen ``params`` collection of
``GeneratorNet``); ``Generator`` holds only the architecture.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flextok_jax.generator import sampler
from flextok_jax.generator.checks import check_labels, check_tokens, is_concrete
from flextok_jax.generator.config import GeneratorConfig
from flextok_jax.generator.network import Cache, GeneratorNet

Params = dict[str, Any]


class Generator:
    """Class-conditional autoregressive generator over FlexTok token ids.

    ``labels == config.num_classes`` selects the null (unconditional) class row.
    """

    def __init__(self, config: GeneratorConfig):
        self.config = config
        self.net = GeneratorNet(config)

    # ------------------------------------------------------------------ parameters
    def init_boxed(self, rng: jax.Array) -> Params:
        """Random parameters, still in ``nn.LogicallyPartitioned`` boxes (for sharded init)."""
        # Two positions, so the token table is used (and created) too.
        return self.net.init(rng, jnp.zeros((1,), jnp.int32), jnp.zeros((1, 2), jnp.int32))["params"]

    def init(self, rng: jax.Array) -> Params:
        """Random parameters as a plain pytree (the head is zero, as in training)."""
        return self._init_jit(rng)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _init_jit(self, rng: jax.Array) -> Params:
        # One compiled program: eager linen init runs op by op (seconds even for a tiny model).
        return nn.unbox(self.init_boxed(rng))

    def logical_specs(self) -> Any:
        """PartitionSpecs of logical axis names for every parameter (nothing is allocated)."""
        return nn.get_partition_spec(jax.eval_shape(self.init_boxed, jax.random.key(0)))

    # ------------------------------------------------------------------ forward
    def logits(self, params: Params, labels: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced logits: labels int [B], tokens int [B, T] -> float32 [B, T, V];
        logits[:, t] is the distribution of tokens[:, t] given the class and tokens[:, :t].

        Concrete inputs are validated and run through a cached jit; traced inputs (inside the
        caller's jit, e.g. a train step under mesh rules) are traced inline, so the caller's
        logical rules reach the activation constraints.
        """
        check_labels(self.config, labels)
        check_tokens(self.config, tokens, len(labels))
        if is_concrete(params, labels, tokens):
            return self._logits_jit(params, jnp.asarray(labels, jnp.int32), jnp.asarray(tokens, jnp.int32))
        return self.net.apply({"params": params}, labels, tokens)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _logits_jit(self, params: Params, labels: jax.Array, tokens: jax.Array) -> jax.Array:
        return self.net.apply({"params": params}, labels, tokens)

    def init_cache(self, rows: int, length: int) -> Cache:
        """An empty KV cache: per layer (k, v), each [rows, heads, length, head_dim]."""
        cfg = self.config
        shape = (rows, cfg.num_heads, length, cfg.head_dim)
        return tuple((jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype)) for _ in range(cfg.depth))

    def prefill(self, params: Params, labels: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """labels [N] at position 0 -> (float32 logits [N, V] of token 0, cache)."""
        return self.net.apply({"params": params}, labels, cache, method=GeneratorNet.prefill)

    def decode(self, params: Params, prev_tokens: jax.Array, pos: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """prev_tokens [N] (token pos - 1) at position pos -> (float32 logits [N, V] of token pos, cache)."""
        return self.net.apply({"params": params}, prev_tokens, pos, cache, method=GeneratorNet.decode)

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        params: Params,
        labels: Any,
        num_tokens: Any = None,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        rng: jax.Array | None = None,
        guidance_schedule: str = "constant",
        return_logits: bool = False,
    ) -> Any:
        """Sample token ids (``num_tokens=None``: until EOS, also returning the lengths); see
        ``flextok_jax.generator.sampler.generate``."""
        return sampler.generate(
            self, params, labels, num_tokens, cfg_scale, temperature, top_k, top_p, rng,
            guidance_schedule, return_logits,
        )
