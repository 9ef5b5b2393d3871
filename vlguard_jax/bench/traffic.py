"""Bytes one decode step moves, against the bytes it must read: the weights and the KV cache.

Decoding a token is bound by memory traffic, so a step that copies weights or cache runs slower by what it copies.
XLA's `cost_analysis()["bytes accessed"]` counts the body of a loop once: the step is compiled as the engines run
it, `generate.step.decode_step` in a `while_loop` over the carried cache with the layers' weights sliced outside,
and has no loop of its own (checked), so the count is one step's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.generate.sampling import decoder
from vlguard_jax.generate.step import decode_step, layer_weights
from vlguard_jax.models.llama import KVCache


def _bytes(tree) -> int:
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def must_read(model, rows: int, slots: int) -> int:
    """Bytes one step over `rows` rows reads at the least: the decoder's weights (of an untied embedding table only
    the rows' lookups) and every slot of the KV cache (attention reads them all, the unwritten ones masked)."""
    text = decoder(model)
    weights = _bytes(nnx.state(text))
    if text.lm_head is not None:
        table = text.model.embed_tokens.embedding
        weights += rows * _bytes(table[0]) - _bytes(table[...])
    cfg = text.config
    return weights + _bytes(jax.eval_shape(lambda: KVCache.zeros(cfg, rows, slots, text.model.dtype)))


def step_bytes(model, rows: int, slots: int) -> float:
    """XLA's bytes accessed by one decode step of `rows` rows over a cache of `slots` slots."""
    graphdef, state = nnx.split(model)
    text = decoder(model)

    def loop(state, layers, cache, mask, token, position):
        model = nnx.merge(graphdef, state)

        def body(carry):
            i, cache, token = carry
            logits, cache = decode_step(model, layers, token, mask, position + i, cache, i)
            return i + 1, cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

        return jax.lax.while_loop(lambda c: c[0] < slots, body, (jnp.int32(0), cache, token))[1]

    cache = jax.eval_shape(lambda: KVCache.zeros(text.config, rows, slots, text.model.dtype))
    rows_of = lambda dtype, *shape: jax.ShapeDtypeStruct((rows, *shape), dtype)
    compiled = jax.jit(loop, donate_argnums=(2,)).lower(
        state, jax.eval_shape(lambda: layer_weights(model)), cache, rows_of(bool, slots), rows_of(jnp.int32),
        rows_of(jnp.int32)).compile()
    loops = compiled.as_text().count(" while(")
    if loops != 1:
        raise RuntimeError(f"the decode step holds a loop of its own ({loops} loops in all): XLA would count its "
                           "body once")
    return float(compiled.cost_analysis()["bytes accessed"])


def decode_traffic(model, rows: int, slots: int) -> dict:
    """Bytes per generated token of one decode step, and their ratio to what the step must read (None where the
    step scans its layers: XLA would count one layer's)."""
    needed = must_read(model, rows, slots)
    if jax.eval_shape(lambda: layer_weights(model)) is None:
        return {"bytes_per_token": None, "weights_and_cache_bytes_per_token": needed / rows,
                "bytes_per_token_vs_weights_and_cache": None}
    moved = step_bytes(model, rows, slots)
    return {"bytes_per_token": moved / rows, "weights_and_cache_bytes_per_token": needed / rows,
            "bytes_per_token_vs_weights_and_cache": moved / needed}
