"""The training state: everything a resumed run needs besides the data iterator."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """One pytree, so it can be jitted, sharded, donated and checkpointed as a whole.

    params: the task's trainable parameters; frozen: parameters the loss uses but never updates
    (e.g. {'vae'}, or {}); opt_state: optax state shaped like params; ema_params: exponential
    moving average of params; rng: uint32 [2] raw key data (the key of step s is
    fold_in(rng, s), so a resumed run draws the same randomness); step: int32 [].
    """

    step: jax.Array
    params: Any
    frozen: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array

    def step_key(self) -> jax.Array:
        """The typed PRNG key of the current step."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
