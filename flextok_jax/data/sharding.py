"""Process-local numpy batches -> global, batch-sharded jax.Arrays."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from flextok_jax.parallel import BATCH_AXES, batch_sharding


def to_global_batch(
    local_batch: dict[str, np.ndarray], mesh: Mesh, data_axes: Sequence[str] = BATCH_AXES
) -> dict[str, jax.Array]:
    """Each `[B_local, ...]` array -> global `[B_local * process_count, ...]` jax.Array
    sharded over `data_axes` on the batch axis.

    Every process passes its own shard (from `make_dataset`); the global batch
    is their concatenation in process order.
    """

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("to_global_batch needs arrays with a batch axis, got a scalar")
        return jax.make_array_from_process_local_data(batch_sharding(mesh, data_axes), x)

    return {k: put(v) for k, v in local_batch.items()}
