"""The engines' decode step is the model's forward over one token, and reads its weights and KV cache about once:
XLA's bytes accessed by the compiled step stay within 1.25× of them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlguard_jax.bench import traffic
from vlguard_jax.bench.ours import run_config
from vlguard_jax.bench.shapes import SIZES
from vlguard_jax.generate.sampling import forward
from vlguard_jax.generate.step import decode_step, layer_weights
from vlguard_jax.models.llama import KVCache, LlamaForCausalLM
from vlguard_jax.train.setup import make_model


def test_decode_step_is_the_models_forward_over_one_token():
    cfg = dataclasses.replace(SIZES["tiny"].model.text, num_kv_heads=2)  # grouped-query heads
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    rows, prompt, slots = 2, 5, 8
    ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (rows, prompt)), jnp.int32)
    prompt_mask = np.ones((rows, prompt), bool)
    prompt_mask[1, :2] = False  # row 1 is left-padded
    positions = jnp.asarray(np.maximum(prompt_mask.cumsum(1) - 1, 0))
    mask = np.zeros((rows, slots), bool)
    mask[:, :prompt] = prompt_mask
    _, cache = forward(model, ids, None, jnp.asarray(mask), positions, KVCache.zeros(cfg, rows, slots), 0)
    mask[:, prompt] = True
    token, position = jnp.asarray([7, 11], jnp.int32), positions[:, -1] + 1
    sliced = layer_weights(model)  # on this CPU: the layers sliced once; None: the stack scanned (TPU, GPU)
    assert sliced is not None and len(sliced) == cfg.num_layers
    for index, layers in [(jnp.int32(prompt), sliced), (jnp.full(rows, prompt, jnp.int32), sliced),  # one slot,
                          (jnp.int32(prompt), None)]:  # or one per row; and the scan
        want_logits, want_cache = forward(model, token[:, None], None, jnp.asarray(mask), position[:, None], cache,
                                          index)
        logits, new_cache = decode_step(model, layers, token, jnp.asarray(mask), position, cache, index)
        np.testing.assert_allclose(logits, want_logits[:, -1], atol=1e-5)
        for got, want in zip(new_cache, want_cache):
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert np.abs(np.asarray(got)[:, :, :, prompt]).sum() > 0  # the new token's keys and values are written


def test_layers_are_sliced_only_where_the_compiler_copies_scanned_slices(monkeypatch):
    from vlguard_jax.generate import step

    model = LlamaForCausalLM(SIZES["tiny"].model.text, rngs=nnx.Rngs(0))
    for platform, sliced in (("cpu", True), ("tpu", False), ("gpu", False)):
        monkeypatch.setattr(step, "current_platform", lambda: platform)
        assert (step.layer_weights(model) is not None) == sliced
        assert (traffic.decode_traffic(model, rows=1, slots=16)["bytes_per_token"] is not None) == sliced


@pytest.fixture(scope="module")
def tiny():
    size = SIZES["tiny"]
    return make_model(size.model, run_config(size, "full", jnp.float32))


def test_a_decode_step_reads_weights_and_cache_about_once(tiny):
    """Of the 1.25: the layer scan's weight copies cost 2.5× on `small`; what is left is attention's copies of each
    layer's keys and values (transposed keys, sliced values), 2× the cache (8% of the bytes here)."""
    figures = traffic.decode_traffic(tiny, rows=1, slots=128)
    needed = traffic.must_read(tiny, rows=1, slots=128)
    assert figures["weights_and_cache_bytes_per_token"] == needed
    assert 1.0 <= figures["bytes_per_token_vs_weights_and_cache"] <= 1.25


def test_the_traffic_count_sees_a_cache_copy_and_refuses_a_nested_loop(tiny, monkeypatch):
    def copying_step(*args):
        logits, cache = decode_step(*args)  # the cache carried through a convert and back: one full copy
        return logits, jax.tree.map(lambda c: c.astype(jnp.bfloat16).astype(c.dtype), cache)

    monkeypatch.setattr(traffic, "decode_step", copying_step)
    assert traffic.decode_traffic(tiny, rows=1, slots=128)["bytes_per_token_vs_weights_and_cache"] > 1.25

    def scanned_step(model, layers, token, mask, position, cache, index):
        logits, cache = forward(model, token[:, None], None, mask, position[:, None], cache, index)
        return logits[:, -1], cache

    monkeypatch.setattr(traffic, "decode_step", scanned_step)
    with pytest.raises(RuntimeError, match="loop of its own"):
        traffic.decode_traffic(tiny, rows=1, slots=128)
