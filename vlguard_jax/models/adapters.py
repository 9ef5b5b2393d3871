"""Several LoRA runs over one frozen base, side by side in one model: each trainable leaf (adapters and the
projector a LoRA run trains) stacked along an adapter axis.

`Linear` reads a stacked weight as "rows in K equal contiguous groups, group g uses weight g" (`grouped_dot`), so
a batch whose slots are split evenly between K adapters runs every base matmul once for all of them. The axis sits
right after the layer axis of scanned layers (the scan hands each layer `[K, in, out]`), first elsewhere.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def adapter_axis(variable: nnx.Variable) -> int:
    axes = variable.get_metadata().get("out_sharding") or ()
    return 1 if tuple(axes[:1]) == ("layers",) else 0


def _stacked_sharding(array: jax.Array, axis: int):
    """The leaf's own placement with the new adapter axis unsplit (None: a plain device array)."""
    sharding = array.sharding
    if not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec) + (None,) * (array.ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[:axis], None, *spec[axis:]))


def stack_adapters(states: Sequence[nnx.State]) -> nnx.State:
    """One state whose leaves hold K runs' leaves along the adapter axis. The runs must share a structure (the
    same LoRA targets and rank over the same base): a mismatch names the first differing leaf."""
    if not states:
        raise ValueError("no adapters to stack")
    first = nnx.to_flat_state(states[0])
    for k, state in enumerate(states[1:], start=1):
        other = dict(nnx.to_flat_state(state))
        for path, variable in first:
            if path not in other or other[path].shape != variable.shape:
                found = "absent" if path not in other else f"of shape {other[path].shape}"
                raise ValueError(f"adapter {k} does not match adapter 0 at {'.'.join(map(str, path))} "
                                 f"({found}, adapter 0's is {variable.shape}): stack runs of one LoRA recipe")

    def stack(*variables: nnx.Variable) -> nnx.Variable:
        axis = adapter_axis(variables[0])
        value = jnp.stack([v[...] for v in variables], axis=axis)
        sharding = _stacked_sharding(variables[0][...], axis)
        return variables[0].replace(value if sharding is None else jax.device_put(value, sharding))

    return jax.tree.map(stack, *states, is_leaf=_is_variable)


def select_adapter(stacked: nnx.State, index: jax.Array | int) -> nnx.State:
    """Adapter `index`'s own leaves (traceable index): a batch of that adapter's rows alone."""
    return jax.tree.map(lambda v: v.replace(jax.lax.dynamic_index_in_dim(v[...], index, adapter_axis(v), False)),
                        stacked, is_leaf=_is_variable)


def count_adapters(stacked: nnx.State) -> int:
    leaf = jax.tree.leaves(stacked, is_leaf=_is_variable)[0]
    return leaf.shape[adapter_axis(leaf)]
