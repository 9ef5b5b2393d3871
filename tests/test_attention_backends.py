"""Each backend's attention against ours: splash (Pallas' interpreter on CPU) in value and gradient, on one device,
on a data × fsdp × tensor mesh and inside the LLaVA forward against transformers; cuDNN's argument conversion
(mask → lengths, left-padded rows rolled) run through XLA; the table that picks them."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vlguard_jax
from hf_fixtures import build_hf, hf_logits, mixed_batch, save_layout
from vlguard_jax.models import attention
from vlguard_jax.parallel import make_mesh

BATCH, LENGTH, HEADS, KV_HEADS, DIM = 4, 160, 4, 2, 16  # 160: splash pads it to two 128-token blocks


def qkv(seed=0, length=LENGTH):
    rng = np.random.RandomState(seed)
    return [jnp.asarray(rng.randn(BATCH, length, h, DIM).astype(np.float32)) for h in (HEADS, KV_HEADS, KV_HEADS)]


def padded(side: str, length=LENGTH) -> np.ndarray:
    """Rows of different lengths, padded on `side` (none: every position holds a token)."""
    valid = np.ones((BATCH, length), bool)
    for row, pad in enumerate([0, 7, 60, length - 1]):
        if side == "left":
            valid[row, :pad] = False
        elif side == "right":
            valid[row, length - pad:] = False
    return valid


def loss_of(fn, valid):
    """A weighted sum over the positions holding tokens: padded queries' outputs carry no meaning."""
    weights = jnp.asarray(np.random.RandomState(9).randn(BATCH, valid.shape[1], HEADS, DIM).astype(np.float32))
    weights = weights * jnp.asarray(valid)[:, :, None, None]
    return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)


def assert_equal_on_tokens(a, b, valid, atol):
    np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=atol, rtol=0)


@pytest.mark.parametrize("side", ["none", "left", "right"])
def test_splash_equals_ours_in_value_and_gradient(side):
    q, k, v = qkv()
    valid = padded(side)
    call = lambda impl: lambda q, k, v: attention.self_attention(
        q, k, v, implementation=impl, causal=True, valid=None if side == "none" else jnp.asarray(valid), padding=side)
    assert_equal_on_tokens(call("splash")(q, k, v), call("ours")(q, k, v), valid, 1e-5)
    splash_grads = jax.grad(loss_of(call("splash"), valid), (0, 1, 2))(q, k, v)
    our_grads = jax.grad(loss_of(call("ours"), valid), (0, 1, 2))(q, k, v)
    for ours, theirs in zip(our_grads, splash_grads):
        assert np.abs(np.asarray(ours)).max() > 1e-2
        np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_splash_full_attention_of_the_vision_tower():
    q, k, v = qkv(1, length=50)  # CLIP-like: no mask, not causal, a length no block divides
    ours = attention.self_attention(q, k, v, implementation="ours", causal=False)
    splash = attention.self_attention(q, k, v, implementation="splash", causal=False)
    np.testing.assert_allclose(splash, ours, atol=1e-5, rtol=0)


def test_splash_on_a_mesh_equals_one_device():
    """Inside shard_map each device runs the kernel over its rows and heads (data 2 × fsdp 2 × tensor 2)."""
    q, k, v = qkv(2)
    valid = jnp.asarray(padded("left"))
    call = lambda q, k, v: attention.self_attention(q, k, v, implementation="splash", causal=True, valid=valid,
                                                    padding="left")
    alone = call(q, k, v)
    mesh = make_mesh(2, 2, 2)
    with jax.set_mesh(mesh):
        sharded = jax.jit(call)(q, k, v)
        lowered = jax.jit(call).lower(q, k, v).as_text()
    assert "shard_map" in lowered or "sdy.manual_computation" in lowered
    assert_equal_on_tokens(sharded, alone, np.asarray(valid), 1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_cudnn_arguments_through_xla_equal_the_masked_call(side):
    """The lengths (and, for left padding, the roll) that the cuDNN path passes, run through XLA's implementation,
    against `jax.nn.dot_product_attention` with the boolean mask they replace."""
    q, k, v = qkv(3)
    valid = padded(side)
    mask = jnp.asarray(np.tril(np.ones((LENGTH, LENGTH), bool))[None, None] & valid[:, None, None, :])
    converted = lambda q, k, v: attention.lengths_attention(q, k, v, jnp.asarray(valid), side, True, "xla")
    masked = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    assert_equal_on_tokens(converted(q, k, v), masked(q, k, v), valid, 1e-5)
    for a, b in zip(jax.grad(loss_of(converted, valid), (0, 1, 2))(q, k, v),
                    jax.grad(loss_of(masked, valid), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_left_padding_taken_as_right_padding_is_wrong():
    """The roll matters: the same lengths without it attend the padding (so the test above can fail)."""
    q, k, v = qkv(4)
    valid = padded("left")
    mask = jnp.asarray(np.tril(np.ones((LENGTH, LENGTH), bool))[None, None] & valid[:, None, None, :])
    unrolled = attention.lengths_attention(q, k, v, jnp.asarray(valid), "right", True, "xla")
    masked = jax.nn.dot_product_attention(q, k, v, mask=mask)
    assert np.abs(np.asarray(unrolled)[valid] - np.asarray(masked)[valid]).max() > 0.1


def test_dense_attention_reads_a_head_major_cache_as_it_lies():
    q, k, v = qkv(5)
    mask = jnp.asarray(np.tril(np.ones((LENGTH, LENGTH), bool))[None, None] & padded("left")[:, None, None, :])
    token_major = attention.dense_attention(q, k, v, mask, implementation="ours")
    for impl in ("ours", "xla"):
        head_major = attention.dense_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask,
                                               implementation=impl, kv_head_major=True)
        np.testing.assert_allclose(head_major, token_major, atol=1e-5, rtol=0)


def test_llava_forward_with_splash_matches_transformers(tmp_path):
    """The tiny GQA LLaVA (tower and decoder on splash, a batch with left- and right-padded rows) against
    transformers' fp32 logits, as the parity tests check ours."""
    hf = build_hf("gqa", seed=1)
    ids, mask, pixels = mixed_batch(hf.config, seed=1)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    attention.configure(model, "splash")
    logits = nnx.jit(lambda m, i, p, a: m(i, p, a))(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    ref = hf_logits(hf, ids, mask, pixels)
    valid = mask.astype(bool)
    assert np.abs(ref[valid]).max() > 1.0
    np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=1e-4, rtol=0)


def test_the_table_picks_each_backends_kernel_and_says_why_it_falls_back():
    bf16 = jnp.bfloat16
    assert attention.resolve("auto", "cpu", head_dim=64, dtype=bf16).implementation == "ours"
    assert attention.resolve("auto", "tpu", head_dim=64, dtype=bf16).implementation == "splash"
    assert attention.resolve("auto", "gpu", head_dim=128, dtype=bf16, padding="left") == ("cudnn", None)
    fp32 = attention.resolve("auto", "gpu", head_dim=128, dtype=jnp.float32, padding="right")
    assert fp32.implementation == "xla" and "float32" in fp32.reason
    wide = attention.resolve("cudnn", "gpu", head_dim=256, dtype=bf16, padding="right")
    assert wide.implementation == "xla" and "256" in wide.reason
    unknown = attention.resolve("cudnn", "gpu", head_dim=128, dtype=bf16, padding="unknown")
    assert unknown.implementation == "xla" and "padding" in unknown.reason
    with pytest.raises(ValueError, match="needs a GPU"):
        attention.resolve("cudnn", "cpu")
    with pytest.raises(ValueError, match="known: auto, ours, xla, cudnn, splash"):
        attention.resolve("flash", "gpu")


def test_a_fallback_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(attention, "current_platform", lambda: "gpu")
    monkeypatch.setattr(attention, "_logged", set())
    q, k, v = qkv(6, length=8)
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        for _ in range(3):  # float32 on a "GPU": cuDNN refuses it, XLA runs (on this CPU)
            attention.self_attention(q, k, v, implementation="cudnn", causal=True)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["attention: cudnn → xla: cuDNN flash attention takes bfloat16/float16, not float32"]
