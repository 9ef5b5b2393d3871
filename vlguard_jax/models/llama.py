"""LLaMA-family decoder: RMSNorm, rotate-half RoPE, SwiGLU, grouped-query attention, optional KV cache; Qwen2's
q/k/v biases and Mistral's sliding window as options of the same block.

The cache is an explicit pytree (`KVCache`) threaded through `lax.scan` with the layers, so prefill and every
decode step are pure functions that `generate` can jit once and run inside `lax.while_loop`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlguard_jax.models.config import TextConfig
from vlguard_jax.models.attention import Attends, Visible, dense_attention, dense_implementation, self_attention
from vlguard_jax.models.layers import Embedding, Linear, RMSNorm, activation, scan_layers, stacked
from vlguard_jax.parallel import constrain


class KVCache(NamedTuple):
    """Keys and values of every layer, `[layers, batch, kv_heads, max_len, head_dim]`: heads before slots, so a
    layer's slice is already in the layout attention's batched matmuls read (no per-step transpose copy)."""

    k: jax.Array
    v: jax.Array

    @classmethod
    def zeros(cls, cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
        """Under a mesh, split along batch (data, fsdp) and kv heads (tensor), as the activations that fill it."""
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        axes = ("layers", "batch", "kv_heads", "length", None)
        return cls(constrain(jnp.zeros(shape, dtype), axes), constrain(jnp.zeros(shape, dtype), axes))


def rope_inv_freq(cfg: TextConfig) -> np.ndarray:
    """Inverse frequencies of the rotary embedding, including the `linear` and `llama3` rescalings."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    extra = dict(cfg.rope_scaling)
    if cfg.rope_type == "linear":
        inv_freq = inv_freq / extra["factor"]
    elif cfg.rope_type == "llama3":
        factor, low, high = extra["factor"], extra["low_freq_factor"], extra["high_freq_factor"]
        old_len = extra["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """`[batch, len]` positions → cos, sin `[batch, len, 1, head_dim]` (computed in fp32, then cast)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half convention (halves, not interleaved pairs), as HF LLaMA weights expect."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def causal_mask(attention_mask: jax.Array, query_len: int, offset: jax.Array | int) -> jax.Array:
    """`[batch, 1, q, kv]`: query i (at cache slot `offset + i`) sees valid keys at slots ≤ its own. `offset`: one
    for every row, or one per row (continuous batching's slots are at different lengths)."""
    q_slots = jnp.reshape(offset, (-1, 1)) + jnp.arange(query_len)  # [1 or batch, q]
    k_slots = jnp.arange(attention_mask.shape[1])
    causal = k_slots[None, None, :] <= q_slots[:, :, None]
    return causal[:, None] & attention_mask[:, None, None, :].astype(bool)


def sliding_window(visible: jax.Array, window: int) -> jax.Array:
    """Of each query's visible keys (`[..., q, kv]`), the last `window`: Mistral's sliding window, in which a query
    sees at most `window` keys, itself included. It counts visible keys, not slots, so padding and the empty slots
    the engine leaves between a prefix and its suffix take no room in it: it spans positions, which generation
    counts over the mask. For a row whose tokens are contiguous (every row transformers masks) that is
    transformers' slot rule `i - window < j <= i`."""
    later = jnp.cumsum(visible[..., ::-1], axis=-1, dtype=jnp.int32)[..., ::-1]  # visible keys at or after each
    return visible & (later <= window)


def write_cache(cache: jax.Array, new: jax.Array, layer: jax.Array, offset: jax.Array | int) -> jax.Array:
    """`new` `[batch, t, kv_heads, head_dim]` into one layer of `cache` at slots `offset…offset+t`, in place: a
    slice update for one offset, a scatter for one offset per row."""
    new = new.astype(cache.dtype)
    if jnp.ndim(offset) == 0:
        return jax.lax.dynamic_update_slice(cache, new.swapaxes(1, 2)[None], (layer, 0, 0, offset, 0))
    rows, length = new.shape[:2]
    slots = jnp.reshape(offset, (-1, 1)) + jnp.arange(length)
    return cache.at[layer, jnp.arange(rows)[:, None], :, slots].set(new)


class LlamaAttention(nnx.Module, Attends):
    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.sliding_window = cfg.sliding_window
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qkv_bias = cfg.attention_bias or cfg.qkv_bias  # Qwen2 biases q, k and v but not o
        d, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = Linear(d, q, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.k_proj = Linear(d, kv, ("embed", "kv"), use_bias=qkv_bias, **kw)
        self.v_proj = Linear(d, kv, ("embed", "kv"), use_bias=qkv_bias, **kw)
        self.o_proj = Linear(q, d, ("heads", "embed"), use_bias=cfg.attention_bias, **kw)

    def __call__(self, x, cos, sin, visible: Visible, kv_cache, offset, keys=(None,) * 4):
        b, t, _ = x.shape
        q = apply_rope(self.q_proj(x, keys[0]).reshape(b, t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x, keys[1]).reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x, keys[2]).reshape(b, t, self.num_kv_heads, self.head_dim)
        if kv_cache is not None:  # every layer's cache, updated in place at (layer, :, offset)
            k_all, v_all, layer = kv_cache
            k_all, v_all = write_cache(k_all, k, layer, offset), write_cache(v_all, v, layer, offset)
            kv_cache = (k_all, v_all)
        if visible.dense is None:  # the new tokens see themselves alone: a kernel's case
            out = self_attention(q, k, v, implementation=self.attention, causal=True, valid=visible.valid,
                                 padding=visible.padding, query_chunk=self.query_chunk)
        else:  # a cache at other offsets, or a sliding window: any mask
            mask = visible.dense
            if self.sliding_window is not None and mask.shape[-1] > self.sliding_window:
                # cut here, from whatever mask a caller built (`generate.step` builds the decode step's own)
                mask = sliding_window(mask, self.sliding_window)
            dense = dict(implementation=dense_implementation(self.attention), query_chunk=self.query_chunk)
            if kv_cache is None:  # no cache: the input's own keys and values
                out = dense_attention(q, k, v, mask, **dense)
            else:  # the layer's cached keys and values, read as they lie, head-major
                k_layer, v_layer = (jax.lax.dynamic_index_in_dim(c, layer, keepdims=False) for c in kv_cache)
                out = dense_attention(q, k_layer, v_layer, mask, kv_head_major=True, **dense)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim), keys[3]), kv_cache


class LlamaMLP(nnx.Module):
    """SwiGLU: `down(act(gate x) * up x)`."""

    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, keys=(None,) * 3) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x, keys[0])) * self.up_proj(x, keys[1]), keys[2])


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = LlamaAttention(cfg, **kw)
        self.mlp = LlamaMLP(cfg, **kw)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype,
                                                rngs=rngs)

    def __call__(self, x, cos, sin, visible: Visible, kv_cache, offset, dropout_key=None):
        """`dropout_key` (one per layer) drives LoRA dropout; None means deterministic."""
        keys = [None] * 7 if dropout_key is None else list(jax.random.split(dropout_key, 7))
        attn_out, kv_cache = self.self_attn(self.input_layernorm(x), cos, sin, visible, kv_cache, offset, keys[:4])
        x = constrain(x + attn_out, ("batch", "length", "act_embed"))
        x = constrain(x + self.mlp(self.post_attention_layernorm(x), keys[4:]), ("batch", "length", "act_embed"))
        return x, kv_cache


class LlamaModel(nnx.Module):
    """The decoder body (HF `LlamaModel`): embeddings, stacked layers, final norm."""

    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, remat: str, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = dtype
        self.remat = remat
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        self.layers = stacked(lambda r: LlamaDecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                              cfg.num_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, attention_mask: jax.Array,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                 dropout_key: jax.Array | None = None, padding: str = "unknown"):
        """Final normed hidden states `[batch, len, d]` and the updated cache (None without one).

        `attention_mask` is `[batch, kv_len]`: over the input itself, or over every cache slot when a cache is
        given (the new tokens are written at `cache_index`). `padding`: where the rows' padding sits (`right` in
        training, `left` in generation; `unknown` keeps cuDNN to its dense fallback, see `models.attention`).
        """
        cos, sin = rope_cos_sin(positions, rope_inv_freq(self.config), self.dtype)
        length = inputs_embeds.shape[1]
        from_slot_0 = cache is None or (isinstance(cache_index, int) and cache_index == 0)
        window = self.config.sliding_window
        if from_slot_0 and (window is None or length <= window):
            # Causal over tokens written from slot 0: no key after them is seen, so their own keys are all there
            # is to attend (a kernel's case); a sliding window no shorter than them cuts nothing
            visible = Visible(valid=attention_mask[:, :length], padding=padding)
        else:  # keys at other offsets, or more of them than the window: a dense mask, the layers cut the window
            visible = Visible(dense=causal_mask(attention_mask, length, cache_index))
        x = constrain(inputs_embeds.astype(self.dtype), ("batch", "length", "act_embed"))

        def body(layer, carry, xs):
            h, kv = carry  # the whole cache rides in the carry, so XLA updates it in place
            index, key = xs
            h, kv = layer(h, cos, sin, visible, None if kv is None else (*kv, index), cache_index, key)
            return (h, kv), None

        num_layers = self.config.num_layers
        keys = None if dropout_key is None else jax.random.split(dropout_key, num_layers)
        (x, kv), _ = scan_layers(self.layers, body, (x, None if cache is None else (cache.k, cache.v)),
                                 (jnp.arange(num_layers), keys), remat=self.remat)
        return self.norm(x), None if cache is None else KVCache(*kv)


class LlamaForCausalLM(nnx.Module):
    """Decoder plus output projection (`lm_head`, or the input embeddings when tied)."""

    def __init__(self, cfg: TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, positions: jax.Array,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0, last_only: bool = False,
                 padding: str = "unknown"):
        """Text-only forward (a model loaded by `load_language_model`): logits, and with a `cache` the pair
        `(logits, updated cache)`, as `LlavaForConditionalGeneration.__call__` without images."""
        hidden, cache = self.model(self.model.embed_tokens(input_ids), positions, attention_mask, cache, cache_index,
                                   padding=padding)
        logits = self.logits(hidden[:, -1:] if last_only else hidden)
        return logits if cache is None else (logits, cache)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """fp32 logits whatever the compute dtype (fp32 accumulation): sampling and the loss read them in fp32."""
        if self.lm_head is None:
            return self.model.embed_tokens.attend(hidden)
        return self.lm_head(hidden, out_dtype=jnp.float32)
