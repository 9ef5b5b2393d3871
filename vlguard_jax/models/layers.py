"""Building blocks shared by the vision tower and the decoder.

Parameters carry logical axis names (`out_sharding` metadata, eager sharding off): the mesh placement is decided
later from one rules table (`vlguard_jax.parallel`), so the same module runs on one CPU or a TPU pod.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.parallel import constrain

Axes = tuple[str | None, ...]

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def param(rngs: nnx.Rngs, init, shape, dtype, axes: Axes) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """`y = x @ kernel + bias` with kernel `[in, out]` (the transpose of torch's `Linear.weight`).

    `vlguard_jax.models.lora.apply_lora` may attach an adapter (`lora_a [in, r]`, `lora_b [r, out]`, both
    `nnx.LoRAParam`): `y += dropout(x) @ lora_a @ lora_b * lora_scale`.
    """

    def __init__(self, in_features: int, out_features: int, axes: Axes, *, use_bias: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel = param(rngs, nnx.initializers.lecun_normal(), (in_features, out_features), param_dtype, axes)
        self.bias = param(rngs, nnx.initializers.zeros, (out_features,), param_dtype, axes[1:]) if use_bias else None
        self.lora_a = self.lora_b = nnx.data(None)  # data slots: apply_lora may fill them
        self.lora_scale = 0.0
        self.lora_dropout = 0.0

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None, out_dtype=None) -> jax.Array:
        """`out_dtype` (e.g. fp32 logits of a bf16 model): the matmul accumulates and returns in it."""
        x = x.astype(self.dtype)
        y = grouped_dot(x, self.kernel[...].astype(self.dtype), out_dtype)
        if self.bias is not None:
            bias = self.bias[...].astype(self.dtype)
            if bias.ndim == 2:  # one bias per adapter group: each row takes its group's
                bias = jnp.repeat(bias, x.shape[0] // bias.shape[0], axis=0).reshape(x.shape[0], *[1] * (y.ndim - 2), -1)
            y = y + bias
        if self.lora_a is not None:
            if dropout_key is not None and self.lora_dropout > 0:
                x = dropout(dropout_key, x, self.lora_dropout)
            low_rank = grouped_dot(x, self.lora_a[...].astype(self.dtype))
            y = y + grouped_dot(low_rank, self.lora_b[...].astype(self.dtype)) * self.lora_scale
        return y


def grouped_dot(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """`x @ w`. A `w` of `[groups, in, out]` (K adapters side by side, `models.adapters`) multiplies the g-th of
    `groups` equal, contiguous blocks of x's rows by `w[g]`: each row meets its own adapter, no weight is copied."""
    if w.ndim == 2:
        return jnp.dot(x, w, preferred_element_type=out_dtype)
    blocks = x.reshape(w.shape[0], x.shape[0] // w.shape[0], *x.shape[1:])
    y = jnp.einsum("gr...i,gio->gr...o", blocks, w, preferred_element_type=out_dtype)
    return y.reshape(x.shape[0], *y.shape[2:])


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout from 16 random bits per element (half the threefry work of a float mask, which cost a
    fifth of a CPU LoRA step). Threefry, unlike XLA's RngBitGenerator, is partitioned with the batch: each
    device draws its own rows' bits only. The rate is resolved to 1/65536."""
    dropped = round(rate * 65536)
    keep = jax.random.bits(key, x.shape, jnp.uint16) >= dropped
    return jnp.where(keep, x * (65536 / (65536 - dropped)), 0).astype(x.dtype)


class RMSNorm(nnx.Module):
    """LLaMA RMSNorm: normalise in fp32, cast back, then scale (the order matters for bf16 parity)."""

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), param_dtype, ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm computed in fp32 (as torch does under autocast)."""

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), param_dtype, ("norm",))
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), param_dtype, ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """One module whose every parameter has a leading `layers` axis, so depth costs no compile time."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(layer_rngs: nnx.Rngs) -> nnx.Module:
        return make_layer(layer_rngs)

    return make(rngs)


def scan_layers(layers: nnx.Module, body: Callable, carry, xs=None, *, remat: str = "none",
                num_layers: int | None = None):
    """Runs `body(layer, carry, x) -> (carry, y)` over the first `num_layers` stacked layers with `lax.scan`.

    The layers are split into a pure state and merged per step (graph-mode `nnx.scan` breaks under `jax.grad`
    of a trainable sub-state); `remat` names a `jax.checkpoint` policy from `REMAT_POLICIES`.
    """
    graphdef, state = nnx.split(layers)
    if num_layers is not None:
        state = jax.tree.map(lambda a: a[:num_layers], state)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat != "none":
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {remat!r} is unknown (known: {', '.join(REMAT_POLICIES)})")
        step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))


class Embedding(nnx.Module):
    """A lookup table `[num, dim]`; `attend` gives logits against it (tied output embeddings)."""

    def __init__(self, num: int, dim: int, axes: Axes, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.rows_axis = axes[0]
        self.embedding = param(rngs, nnx.initializers.normal(0.02), (num, dim), param_dtype, axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """The table is gathered whole along its feature axis first (FSDP's all-gather before use): the looked-up
        rows then stay split by batch, and a trainable table's gradient is a reduce-scatter of batch-split
        partial sums. Looked up from the fsdp-split table, the backward pass had to move the batch-split
        cotangent onto the table's feature split, which XLA's SPMD partitioner does by replicating it whole
        ("Involuntary full rematerialization")."""
        table = constrain(self.embedding[...], (self.rows_axis, None))
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """fp32 logits (operands in the compute dtype, fp32 accumulation)."""
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T,
                       preferred_element_type=jnp.float32)
