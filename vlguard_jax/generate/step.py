"""The decode step both engines run: one new token per row, the decoder's layers one after another, each layer
reading weight arrays of its own.

The model's forward scans its stacked layers, so every step slices each layer's weights out of the stack, and
XLA:CPU copies a slice before a matmul reads it: a `small` decode step (batch 1, 856 cache slots, fp32) moved
909 MB, 2.48× the 367 MB of weights and KV cache one token reads (`bench.traffic`, the scan unrolled to count every
layer). Sliced once per engine call, before the decode loop (`layer_weights`), the step moves 456 MB (1.24×); the
rest is attention copying each layer's keys (transposed for the score matmul) and values (sliced from the stacked
cache) before reading them: 2× the cache. The cost: the sliced weights are a second copy of the layers while a call
runs, and the step compiles unrolled over the layers.
"""

from __future__ import annotations

import jax
from flax import nnx

from vlguard_jax.generate.sampling import decoder
from vlguard_jax.models.attention import Visible
from vlguard_jax.models.llama import KVCache, causal_mask, rope_cos_sin, rope_inv_freq
from vlguard_jax.parallel import constrain


def layer_weights(model) -> tuple[nnx.State, ...]:
    """Each decoder layer's state (weights and any adapters) sliced out of the stacked layers."""
    text = decoder(model)
    state = nnx.state(text.model.layers)
    return tuple(jax.tree.map(lambda a, i=i: a[i], state) for i in range(text.config.num_layers))


def decode_step(model, layers: tuple[nnx.State, ...], token: jax.Array, mask: jax.Array, position: jax.Array,
                cache: KVCache, cache_index: jax.Array) -> tuple[jax.Array, KVCache]:
    """fp32 logits `[batch, vocab]` after `token` `[batch]` at `position` `[batch]`, and the cache with its keys and
    values written at `cache_index` (one slot, or one per row). `mask` `[batch, slots]`: the slots each row sees,
    its new one included. The model's own forward over one token, layer by layer over `layers`."""
    text = decoder(model)
    body = text.model
    graphdef = nnx.graphdef(body.layers)
    x = constrain(body.embed_tokens(token[:, None]), ("batch", "length", "act_embed"))
    cos, sin = rope_cos_sin(position[:, None], rope_inv_freq(body.config), body.dtype)
    visible = Visible(dense=causal_mask(mask, 1, cache_index))
    kv = (cache.k, cache.v)
    for index, weights in enumerate(layers):
        x, kv = nnx.merge(graphdef, weights)(x, cos, sin, visible, (*kv, index), cache_index)
    return text.logits(body.norm(x))[:, 0], KVCache(*kv)
