"""``Generator``: parameters, teacher-forced logits and the KV-cache pieces of the AR generator.

``cond`` everywhere is what the model is conditioned on: int labels [B] for a class model
(``config.condition == 'class'``), a ``TextCondition`` / ``text.TextFeatures`` for a text model
(shapes in ``flextok_jax.generator.conditioning``).

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
from flextok_jax.generator.checks import check_tokens, is_concrete
from flextok_jax.generator.conditioning import TextCondition, condition_batch, prepare_condition
from flextok_jax.generator.config import GeneratorConfig
from flextok_jax.generator.network import Cache, GeneratorNet, TextCache

Params = dict[str, Any]


class Generator:
    """Autoregressive generator over FlexTok token ids, class- or text-conditional.

    Class models: ``labels == config.num_classes`` selects the null (unconditional) class row.
    Text models: ``TextCondition.null`` (or ``TextCondition.null_prompts``) selects the null prefix.
    """

    def __init__(self, config: GeneratorConfig):
        self.config = config
        self.net = GeneratorNet(config)

    # ------------------------------------------------------------------ parameters
    def init_boxed(self, rng: jax.Array) -> Params:
        """Random parameters, still in ``nn.LogicallyPartitioned`` boxes (for sharded init)."""
        # Two positions, so the token table is used (and created) too.
        if self.config.condition == "class":
            cond = jnp.zeros((1,), jnp.int32)
        else:
            cond = prepare_condition(self.config, TextCondition.null_prompts(1, self.config))
        return self.net.init(rng, cond, jnp.zeros((1, 2), jnp.int32))["params"]

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
    def logits(self, params: Params, cond: Any, tokens: jax.Array) -> jax.Array:
        """Teacher-forced logits: cond (labels int [B] or a text condition), tokens int [B, T]
        -> float32 [B, T, V]; logits[:, t] is the distribution of tokens[:, t] given the
        condition and tokens[:, :t].

        Concrete inputs are validated and run through a cached jit; traced inputs (inside the
        caller's jit, e.g. a train step under mesh rules) are traced inline, so the caller's
        logical rules reach the activation constraints.
        """
        batch = condition_batch(self.config, cond)
        check_tokens(self.config, tokens, batch)
        cond = prepare_condition(self.config, cond)
        if is_concrete(params, tokens, *jax.tree.leaves(cond)):
            return self._logits_jit(params, cond, jnp.asarray(tokens, jnp.int32))
        return self.net.apply({"params": params}, cond, tokens)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _logits_jit(self, params: Params, cond: Any, tokens: jax.Array) -> jax.Array:
        return self.net.apply({"params": params}, cond, tokens)

    def cache_length(self, max_k: int) -> int:
        """Cache positions a sampler of ``max_k`` tokens needs: the prefix and tokens 0 .. max_k - 2
        as inputs (max_k for a class model, max_text_tokens + max_k for a text model)."""
        return self.config.prefix_offset + max_k

    def init_cache(self, rows: int, length: int) -> Cache | TextCache:
        """An empty KV cache: per layer (k, v), each [rows, heads, length, head_dim] (a text
        model: a ``TextCache`` of those and an all-False key mask [rows, length])."""
        cfg = self.config
        shape = (rows, cfg.num_heads, length, cfg.head_dim)
        layers = tuple((jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype)) for _ in range(cfg.depth))
        if cfg.condition == "class":
            return layers
        return TextCache(layers=layers, key_mask=jnp.zeros((rows, length), bool))

    def grow_cache(self, cache: Cache | TextCache, length: int) -> Cache | TextCache:
        """The same cache with room for ``length`` positions: the new positions are empty (and
        visible in a text model's key mask, like every token position); the old are unchanged."""
        layers = cache if self.config.condition == "class" else cache.layers
        extra = length - layers[0][0].shape[2]
        if extra < 0:
            raise ValueError(f"cannot shrink a KV cache of {layers[0][0].shape[2]} positions to {length}")
        pad = ((0, 0), (0, 0), (0, extra), (0, 0))
        layers = tuple((jnp.pad(k, pad), jnp.pad(v, pad)) for k, v in layers)
        if self.config.condition == "class":
            return layers
        return TextCache(layers=layers, key_mask=jnp.pad(cache.key_mask, ((0, 0), (0, extra)), constant_values=True))

    def prefill(self, params: Params, cond: Any, cache: Cache | TextCache) -> tuple[jax.Array, Cache | TextCache]:
        """The canonical condition prefix (``prepare_condition``) of N rows into an empty cache
        -> (float32 logits [N, V] of token 0, cache)."""
        return self.net.apply({"params": params}, cond, cache, method=GeneratorNet.prefill)

    def decode(self, params: Params, prev_tokens: jax.Array, pos: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        """prev_tokens [N] (token pos - 1) at token position pos -> (float32 logits [N, V] of token pos, cache)."""
        return self.net.apply({"params": params}, prev_tokens, pos, cache, method=GeneratorNet.decode)

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        params: Params,
        cond: Any,
        num_tokens: Any = None,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        rng: jax.Array | None = None,
        guidance_schedule: str = "constant",
        return_logits: bool = False,
        cache_chunk: int = sampler.CACHE_CHUNK,
    ) -> Any:
        """Sample token ids for ``cond`` (labels [B] or a text condition); ``num_tokens=None``
        samples until EOS and also returns the lengths; see
        ``flextok_jax.generator.sampler.generate``."""
        return sampler.generate(
            self, params, cond, num_tokens, cfg_scale, temperature, top_k, top_p, rng,
            guidance_schedule, return_logits, cache_chunk=cache_chunk,
        )
