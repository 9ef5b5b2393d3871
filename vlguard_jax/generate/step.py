"""The decode step both engines run: one new token per row, through the decoder's layers.

The model's forward scans its stacked layers, so every step slices each layer's weights out of the stack. XLA:CPU
copies a slice before a matmul reads it: a `small` decode step (batch 1, 856 cache slots, fp32) moved 909 MB,
2.48× the 367 MB of weights and KV cache one token reads (`bench.traffic`, the scan unrolled to count every layer).
There the layers are sliced once per engine call, before the decode loop (`layer_weights`), and the step runs
them one after another: 456 MB (1.24×); the rest is attention copying each layer's keys (transposed for the score
matmul) and values (sliced from the stacked cache). The cost: a second copy of the layers while a call runs (about
13 GB for a 7B model in bf16) and a step compiled unrolled over the layers. libtpu reads a scanned slice in place
(a scanned chain of 2048² bf16 matmuls compiled for v5e accesses 8.49 MB per 8.39 MB layer), so on a TPU the step
keeps the scan and its memory; on a GPU, not measured, it keeps them too (`SLICED_LAYERS`).
"""

from __future__ import annotations

import jax
from flax import nnx

from vlguard_jax.generate.sampling import decoder, forward
from vlguard_jax.models.attention import Visible, current_platform
from vlguard_jax.models.llama import KVCache, causal_mask, rope_cos_sin, rope_inv_freq
from vlguard_jax.parallel import constrain


SLICED_LAYERS = {"cpu": True}  # backends whose compiler copies a scanned layer's weights before reading them


def layer_weights(model) -> tuple[nnx.State, ...] | None:
    """Each decoder layer's state (weights and any adapters) sliced out of the stacked layers, on the backends of
    `SLICED_LAYERS`; None elsewhere (the step then scans the stack, as the model's forward does)."""
    if not SLICED_LAYERS.get(current_platform(), False):
        return None
    text = decoder(model)
    state = nnx.state(text.model.layers)
    return tuple(jax.tree.map(lambda a, i=i: a[i], state) for i in range(text.config.num_layers))


def decode_step(model, layers: tuple[nnx.State, ...], token: jax.Array, mask: jax.Array, position: jax.Array,
                cache: KVCache, cache_index: jax.Array) -> tuple[jax.Array, KVCache]:
    """fp32 logits `[batch, vocab]` after `token` `[batch]` at `position` `[batch]`, and the cache with its keys and
    values written at `cache_index` (one slot, or one per row). `mask` `[batch, slots]`: the slots each row sees,
    its new one included. The model's own forward over one token: layer by layer over `layers`, or, without
    them, its scan over the stacked layers."""
    if layers is None:
        logits, cache = forward(model, token[:, None], None, mask, position[:, None], cache, cache_index)
        return logits[:, -1], cache
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
