"""Device mesh and logical-axis sharding, all driven by configuration.

Parameters and activations are annotated with logical axis names in the model; the rules below
(or ``config.sharding.rules``) map them onto mesh axes ``data`` / ``fsdp`` / ``tensor``. The
pattern for initialisation is abstract init -> shardings -> jitted sharded init, so no full copy
of the parameters ever sits on one device.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or None = replicated). Weights are split over fsdp on their model
# dimension and over tensor on their head / hidden dimension. Activations have names of their own
# (act_*): the batch goes over data and fsdp, the rest is replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", BATCH_AXES),
    ("act_seq", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("adaln", "tensor"),
    ("embed_out", None),
    ("vocab", "tensor"),
    ("classes", None),
    ("text_embed", None),
    ("text_positions", None),
    ("captions", None),
    ("positions", None),
    ("token_types", None),
    ("registers", None),
    ("patch", None),
    ("code", None),
    ("freq", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", None),
)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh of ``shape`` over the given (default: all) devices with Auto axis types.

    A -1 in ``shape`` takes all remaining devices, so (-1, 1, 1) is pure data parallelism.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh dimension may be -1, got {shape}")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        shape[shape.index(-1)] = len(devices) // rest
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {len(devices)}")
    return jax.make_mesh(
        tuple(shape), tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape), devices=devices
    )


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, tuple(rules))


def fit_to_shapes(shardings: Any, shapes: Any) -> Any:
    """Drop mesh axes from dimensions they do not divide (those dimensions are replicated).

    Keeps one set of rules usable for every model size: e.g. a SwiGLU width of 170 cannot be
    split 4 ways, but 2048 can.
    """

    def fit(sharding: NamedSharding, shape: Any) -> NamedSharding:
        dims = tuple(getattr(shape, "shape", shape))
        spec = list(sharding.spec) + [None] * (len(dims) - len(sharding.spec))
        for i, axes in enumerate(spec):
            if axes is None:
                continue
            names = axes if isinstance(axes, tuple) else (axes,)
            size = int(np.prod([sharding.mesh.shape[a] for a in names]))
            if dims[i] % size:
                spec[i] = None
        return NamedSharding(sharding.mesh, P(*spec))

    return jax.tree_util.tree_map(fit, shardings, shapes, is_leaf=lambda x: isinstance(x, NamedSharding))


def mesh_batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The ``BATCH_AXES`` that ``mesh`` has (evaluation may run on a plain ('data',) mesh)."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh, data_axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """Sharding of any [B, ...] array: the batch axis split over ``data_axes``, the rest replicated."""
    missing = [a for a in data_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"mesh axes {mesh.axis_names} lack data axes {missing}")
    return NamedSharding(mesh, P(tuple(data_axes)))


def abstract_shardings(init_fn: Callable[..., Any], mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                       *args) -> tuple[Any, Any]:
    """(ShapeDtypeStructs, NamedShardings) of what a boxed ``init_fn(*args)`` returns, without
    allocating it: abstract init -> logical specs -> mesh shardings (fitted to the shapes)."""
    abstract = jax.eval_shape(init_fn, *args)
    shapes = nn.unbox(abstract)
    shardings = fit_to_shapes(logical_to_shardings(nn.get_partition_spec(abstract), mesh, rules), shapes)
    return shapes, shardings


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES, *args) -> tuple[Any, Any]:
    """Run a boxed ``init_fn(*args)`` directly into its shardings: abstract init -> shardings ->
    jitted init, so no device ever holds a full copy.

    Returns (plain params, shardings). ``init_fn`` returns ``nn.LogicallyPartitioned`` leaves.
    """
    _, shardings = abstract_shardings(init_fn, mesh, rules, *args)
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


class MeshJit:
    """``jax.jit(fn, **jit_kwargs)`` that always traces with ``mesh`` set and the logical ``rules``
    active, wherever it is called from.

    ``nn.with_logical_constraint`` inside a model is a no-op unless both are in effect when jit
    traces (which is at the first call, not where ``jax.jit`` was written), so calls and
    ``lower`` enter the mesh here and the rules are entered inside the traced function.
    """

    def __init__(self, fn: Callable[..., Any], mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                 **jit_kwargs: Any) -> None:
        rules = tuple(tuple(r) for r in rules)

        def with_rules(*args: Any) -> Any:
            with nn.logical_axis_rules(rules):
                return fn(*args)

        self.mesh = mesh
        self._jitted = jax.jit(with_rules, **jit_kwargs)

    def __call__(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self._jitted(*args)

    def lower(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self._jitted.lower(*args)


def shard_params(params: Any, logical_specs: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """Place a plain params pytree (e.g. loaded from disk) onto ``mesh`` by the logical rules."""
    shardings = fit_to_shapes(logical_to_shardings(logical_specs, mesh, rules), params)
    return jax.device_put(params, shardings)


def initialize_distributed() -> bool:
    """Start ``jax.distributed`` when this process is one of several; returns True if it did.

    - Explicit (``launch/local_multiprocess.sh``, any cluster): ``JAX_COORDINATOR_ADDRESS``,
      ``FLEXTOK_NUM_PROCESSES`` and ``FLEXTOK_PROCESS_ID`` (optionally ``FLEXTOK_LOCAL_DEVICE_IDS``).
    - SLURM with more than one task, and Cloud TPU pods: jax detects everything itself.
    Single-process runs need nothing and return False. Must run before JAX touches a device.
    """
    import os

    if jax.distributed.is_initialized():
        return True
    # The default CPU client has no cross-process collectives; gloo takes effect only once a
    # distributed client exists, so accelerator and single-process runs are unaffected.
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    env = os.environ
    if "FLEXTOK_NUM_PROCESSES" in env:
        if "JAX_COORDINATOR_ADDRESS" not in env or "FLEXTOK_PROCESS_ID" not in env:
            raise ValueError("FLEXTOK_NUM_PROCESSES needs JAX_COORDINATOR_ADDRESS and FLEXTOK_PROCESS_ID too")
        local = env.get("FLEXTOK_LOCAL_DEVICE_IDS")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["FLEXTOK_NUM_PROCESSES"]),
            process_id=int(env["FLEXTOK_PROCESS_ID"]),
            local_device_ids=[int(i) for i in local.split(",")] if local else None,
        )
        return True
    slurm_tasks = int(env.get("SLURM_NTASKS", "1"))
    tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if slurm_tasks > 1 or "," in tpu_hosts:
        jax.distributed.initialize()
        return True
    return False


def gather_to_host(tree: Any) -> Any:
    """A pytree of (possibly sharded, possibly multi-host) jax.Arrays -> numpy arrays on every
    process. Every process must call it (the gather is a collective when several run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
