"""Device mesh and the one table that maps logical axis names to mesh axes.

Parameters and key activations name their axes logically (`embed`, `mlp`, `heads`, …); `LOGICAL_RULES`
decides where each lands on the `("data", "fsdp", "tensor")` mesh. The same model code then runs on one CPU,
8 virtual devices, a GPU node or a TPU pod.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("kv_heads", "tensor"),  # the KV cache's head axis
    ("vocab", "tensor"),
    ("norm", None),
    ("lora_rank", "fsdp"),  # adapters whose other dims are not fsdp-sharded split their rank instead
    ("act_embed", None),  # the residual stream's feature axis: replicated (params' `embed` takes fsdp)
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh; the sizes must multiply to the number of devices."""
    devices = list(jax.devices() if devices is None else devices)
    if data * fsdp * tensor != len(devices):
        raise ValueError(
            f"mesh data={data} × fsdp={fsdp} × tensor={tensor} = {data * fsdp * tensor} does not match the "
            f"{len(devices)} available devices"
        )
    grid = np.asarray(devices).reshape(data, fsdp, tensor)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: Sequence[str | None], rules=LOGICAL_RULES) -> PartitionSpec:
    table = dict(rules)
    return PartitionSpec(*(None if a is None else table.get(a) for a in axes))


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. 8 KV heads over tensor=16) instead of failing."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        size = math.prod(mesh.shape[n] for n in names)
        fitted.append(entry if names and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def variable_sharding(variable: Any, mesh: Mesh, rules=LOGICAL_RULES) -> NamedSharding:
    """Placement of one `nnx.Variable` from its `out_sharding` logical-axis metadata."""
    axes = variable.get_metadata().get("out_sharding") or ()
    shape = variable.shape
    return NamedSharding(mesh, fit_spec(logical_to_spec(axes, rules), shape, mesh))


def check_rows(batch_size: int, mesh: Mesh | None) -> None:
    """A batch split along `data` × `fsdp` must hold a multiple of those devices' count of rows."""
    if mesh is not None and batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"batch size {batch_size} does not divide over the mesh's data × fsdp = "
                         f"{mesh.shape['data'] * mesh.shape['fsdp']} devices; use a multiple of it")


def place_rows(host, mesh: Mesh | None) -> jax.Array:
    """A host array every process holds, its rows split along the mesh's batch axes: each device takes its own
    rows from the host copy (no transfer between processes). Without a mesh: on the default device."""
    if mesh is None:
        return jnp.asarray(host)
    sharding = NamedSharding(mesh, logical_to_spec(("batch",)))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_replicated(host, mesh: Mesh | None) -> jax.Array:
    """A host array every process holds, whole on every device of the mesh (without a mesh: the default device)."""
    if mesh is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, PartitionSpec()), lambda index: host[index])


def constrain(x: jax.Array, axes: Sequence[str | None], rules=LOGICAL_RULES) -> jax.Array:
    """Sharding constraint by logical axes under `jax.set_mesh(mesh)`; a no-op when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(logical_to_spec(axes, rules), x.shape, mesh))
