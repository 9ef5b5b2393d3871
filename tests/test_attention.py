"""Query-chunked attention equals plain softmax attention (numpy) in value, and the unchunked op in gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlguard_jax.models.attention import dense_attention


def numpy_attention(q, k, v, mask):
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("chunk", [3, 4, 8])
def test_query_chunks_match_full_attention(chunk):
    rng = np.random.RandomState(0)
    batch, length, heads, kv_heads, dim = 2, 8, 4, 2, 16
    q = rng.randn(batch, length, heads, dim).astype(np.float32)
    k = rng.randn(batch, length, kv_heads, dim).astype(np.float32)
    v = rng.randn(batch, length, kv_heads, dim).astype(np.float32)
    valid = np.ones((batch, length), bool)
    valid[1, :3] = False  # a left-padded row
    mask = np.tril(np.ones((length, length), bool))[None, None] & valid[:, None, None, :]
    rows = valid[1, 3:]  # padded queries attend nothing: their output is unspecified padding

    out = np.asarray(dense_attention(q, k, v, mask, implementation="ours", query_chunk=chunk))
    expected = numpy_attention(q, k, v, mask)
    np.testing.assert_allclose(out[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(out[1, 3:][rows], expected[1, 3:][rows], atol=1e-5)

    weights = jnp.asarray(rng.randn(*q.shape).astype(np.float32)) * jnp.asarray(valid)[:, :, None, None]
    loss = lambda c: lambda q, k, v: jnp.sum(dense_attention(q, k, v, mask, implementation="ours", query_chunk=c) * weights)
    chunked, whole = jax.grad(loss(chunk), (0, 1, 2))(q, k, v), jax.grad(loss(0), (0, 1, 2))(q, k, v)
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_head_major_attention_equals_jax_dot_product_attention_in_value_and_gradient():
    """Our CPU/TPU attention (head-major, recomputing backward) against `jax.nn.dot_product_attention` and its
    autodiff: grouped-query heads, a causal mask and a left-padded row."""
    rng = np.random.RandomState(1)
    batch, length, heads, kv_heads, dim = 2, 12, 6, 2, 8
    q, k, v = (jnp.asarray(rng.randn(batch, length, h, dim).astype(np.float32)) for h in (heads, kv_heads, kv_heads))
    valid = np.ones((batch, length), bool)
    valid[0, :5] = False
    mask = jnp.asarray(np.tril(np.ones((length, length), bool))[None, None] & valid[:, None, None, :])
    weights = jnp.asarray(rng.randn(batch, length, heads, dim).astype(np.float32)) * valid[:, :, None, None]

    ours = lambda q, k, v: jnp.sum(dense_attention(q, k, v, mask, implementation="ours") * weights)
    reference = lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, mask=mask) * weights)
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5)
    for a, b in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v)):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(a, b, atol=2e-5)
