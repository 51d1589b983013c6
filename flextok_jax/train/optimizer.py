"""AdamW with warmup + cosine decay and global-norm clipping, and the parameter EMA."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``opt.lr`` over ``opt.warmup_steps``, then cosine to lr * end_lr_factor."""
    warmup = int(min(opt.warmup_steps, max(total_steps - 1, 0)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.lr,
        warmup_steps=warmup,
        decay_steps=max(int(total_steps), warmup + 1),
        end_value=opt.lr * opt.end_lr_factor,
    )


def _decay_mask(params: Any) -> Any:
    # Biases and other vectors (mask / null tokens) are not decayed, matrices are.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule) from ``config.optimizer``; the schedule is for logging."""
    schedule = learning_rate_schedule(opt, total_steps)
    chain = []
    if opt.grad_clip and opt.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(opt.grad_clip))
    chain.append(
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=_decay_mask)
    )
    return optax.chain(*chain), schedule


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leafwise."""
    return optax.incremental_update(params, ema, step_size=1.0 - decay)
