"""Attention per backend: one table picks the implementation, each implementation takes the masks it can express.

`model.attention` names one of `IMPLEMENTATIONS`; `auto` takes `AUTO[platform]`:
- `cudnn` (GPU): cuDNN's fused flash kernel through `jax.nn.dot_product_attention(implementation="cudnn")`.
  It takes padding as sequence lengths, not a boolean mask: right-padded rows (training) pass their lengths;
  left-padded rows (generation) are rolled so their tokens come first, attended, and rolled back.
- `splash` (TPU): Pallas' splash kernel with padding as segment ids (any padding side), inside `jax.shard_map`
  over the mesh's batch and head axes (Mosaic kernels cannot be partitioned automatically). Off a TPU it runs in
  Pallas' interpreter: numerically the kernel, at a crawl (tests only).
- `ours`: the head-major einsum attention with a recomputing backward (`dense_attention`): no stored
  probability square; the fastest on a CPU.
- `xla`: `jax.nn.dot_product_attention`'s XLA lowering (which stores the fp32 probabilities for the backward).

Kernels serve self-attention: training, the vision tower and a prefill written at cache slot 0. A kernel that
cannot take a call's shapes or dtype falls back to the backend's `FALLBACK`, logged once with the reason.
Attention over a KV cache at other offsets (each decode step, an insert after a shared prefix) has masks with
holes; it is `ours` (unless `xla` is asked for), which reads each layer's head-major cache as it lies.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

IMPLEMENTATIONS = ("auto", "ours", "xla", "cudnn", "splash")
AUTO = {"gpu": "cudnn", "tpu": "splash", "cpu": "ours"}
FALLBACK = {"gpu": "xla", "tpu": "ours", "cpu": "ours"}
PADDINGS = ("none", "right", "left", "unknown")  # where a row's padding sits; unknown: only a mask can say
SPLASH_BLOCK = 128  # splash's tile (its default block sizes): sequences are padded to a multiple of it

_log = logging.getLogger(__name__)
_logged: set[str] = set()


class Choice(NamedTuple):
    implementation: str
    reason: str | None = None  # why it is not the one requested (a fallback)


def current_platform() -> str:
    """The platform of the mesh being traced for (a TPU slice compiled from a CPU host says `tpu`), else the
    default backend's."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


def check_implementation(name: str) -> None:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is unknown (known: {', '.join(IMPLEMENTATIONS)})")


def resolve(requested: str, platform: str, *, head_dim: int | None = None, dtype=None,
            padding: str = "none") -> Choice:
    """The implementation a self-attention call of these properties gets on `platform`, and why not the requested
    one when it falls back. `cudnn` needs a GPU; `splash` runs anywhere (interpreted off a TPU)."""
    check_implementation(requested)
    name = AUTO.get(platform, "ours") if requested == "auto" else requested
    fallback = FALLBACK.get(platform, "ours")
    if name == "cudnn":
        if platform != "gpu":
            raise ValueError(f"attention 'cudnn' needs a GPU; this runs on {platform} (use auto, ours or xla)")
        if dtype is not None and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
            return Choice(fallback, f"cuDNN flash attention takes bfloat16/float16, not {jnp.dtype(dtype).name}")
        if head_dim is not None and (head_dim % 8 or head_dim > 128):
            return Choice(fallback, f"cuDNN flash attention takes head dims that are multiples of 8 up to 128, "
                                 f"not {head_dim}")
        if padding == "unknown":
            return Choice(fallback, "the rows' padding side is not known, so it cannot become sequence lengths")
    return Choice(name)


def describe(requested: str, platform: str, parts: dict[str, tuple[int, object, str]]) -> dict[str, dict]:
    """`{part: {"implementation", "fallback_reason"}}` for `parts` = `{part: (head_dim, dtype, padding)}`: what a
    run records and `vlguard-jax env` prints."""
    out = {}
    for part, (head_dim, dtype, padding) in parts.items():
        choice = resolve(requested, platform, head_dim=head_dim, dtype=dtype, padding=padding)
        out[part] = {"implementation": choice.implementation, "fallback_reason": choice.reason}
    return out


class Visible(NamedTuple):
    """What a decoder's queries see: their own tokens (`valid` `[batch, len]`, padded on the `padding` side), or,
    over a KV cache written at other offsets, the keys a `dense` mask `[batch, 1, len, slots]` allows."""

    valid: jax.Array | None = None
    padding: str = "unknown"
    dense: jax.Array | None = None


def dense_implementation(requested: str) -> str:
    """What attention over a KV cache gets: `xla` when asked for, else `ours` (XLA's op takes token-major keys,
    so it would transpose each layer's whole cache on every decode step)."""
    check_implementation(requested)
    return "xla" if requested == "xla" else "ours"


class Attends:
    """Mixin of the modules that attend: their implementation and query chunk, set by `configure`."""

    attention: str = "auto"
    query_chunk: int = 0


def configure(model: nnx.Module, implementation: str, query_chunk: int = 0) -> None:
    """Every attention module of `model` uses `implementation`; the decoder's dense form attends `query_chunk`
    queries at a time (0: all; see `dense_attention`)."""
    check_implementation(implementation)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, Attends):
            module.attention = implementation
            module.query_chunk = query_chunk


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str, causal: bool,
                   valid: jax.Array | None = None, padding: str = "none", query_chunk: int = 0) -> jax.Array:
    """Attention of `q` `[batch, len, heads, head_dim]` over `k`, `v` `[batch, len, kv_heads, head_dim]` at the same
    positions (native grouped-query heads). `valid` `[batch, len]`: the positions holding tokens (None: all);
    `padding` says where the others are. Positions outside `valid` are padding: their outputs carry no meaning."""
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r} is not one of {', '.join(PADDINGS)}")
    platform = current_platform()
    choice = resolve(implementation, platform, head_dim=q.shape[-1], dtype=q.dtype,
                     padding="none" if valid is None else padding)
    if choice.reason:
        _log_once(f"attention: {implementation} → {choice.implementation}: {choice.reason}")
    if choice.implementation == "cudnn":
        return lengths_attention(q, k, v, valid, padding, causal, "cudnn")
    if choice.implementation == "splash":
        return splash_attention(q, k, v, valid, causal, interpret=platform != "tpu")
    mask = None if valid is None else valid[:, None, None, :].astype(bool)
    if causal:
        length = q.shape[1]
        tril = jnp.tril(jnp.ones((length, length), bool))[None, None]
        mask = tril if mask is None else mask & tril
    if mask is not None:
        mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
    return dense_attention(q, k, v, mask, implementation=choice.implementation, query_chunk=query_chunk)


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        _log.warning(message)


# ---- cuDNN: padding as sequence lengths --------------------------------------------------------------------

def lengths_attention(q, k, v, valid, padding: str, causal: bool, implementation: str = "cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention` with padding as per-row lengths (what cuDNN takes). Left-padded rows are
    rolled so their tokens come first, and the output rolled back. A row with no token gets length 1 (its
    output is padding either way; a zero length is not defined). `implementation="xla"` runs the same arguments
    through XLA, which is how the conversion is tested without a GPU."""
    if valid is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
    lengths = jnp.maximum(jnp.sum(valid, axis=-1, dtype=jnp.int32), 1)
    if padding == "left":
        order, inverse = _left_to_right(valid.shape[1], lengths)
        q, k, v = (jnp.take_along_axis(x, order[:, :, None, None], axis=1) for x in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths, implementation=implementation)
    if padding == "left":
        out = jnp.take_along_axis(out, inverse[:, :, None, None], axis=1)
    return out


def _left_to_right(length: int, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row gather indices that move a left-padded row's tokens to the front, and back."""
    start = (length - lengths)[:, None]
    positions = jnp.arange(length)[None]
    return (positions + start) % length, (positions - start) % length


# ---- splash: padding as segment ids, inside shard_map --------------------------------------------------------

def splash_attention(q, k, v, valid, causal: bool, *, interpret: bool) -> jax.Array:
    """Pallas splash attention. Tokens are segment 1 and padding segment 0 (a padded query sees padding only,
    so no row is empty); sequences are padded to a multiple of `SPLASH_BLOCK`. On a mesh the kernel runs per
    device over its rows and heads (heads split along `tensor` when both head counts divide)."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    pad = -length % SPLASH_BLOCK
    segments = jnp.ones((batch, length), jnp.int32) if valid is None else valid.astype(jnp.int32)
    segments = jnp.pad(segments, ((0, 0), (0, pad)))
    head_major = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    q = (q * jnp.asarray(head_dim ** -0.5, q.dtype))  # splash does not scale
    q, k, v = head_major(q), head_major(k), head_major(v)
    mesh = jax.sharding.get_abstract_mesh()
    rows_axes, head_axis = _splash_axes(mesh, batch, heads, kv_heads)
    local_heads = heads // (mesh.shape[head_axis] if head_axis else 1)
    kernel = functools.partial(_splash_kernel, heads=local_heads, length=length + pad, causal=causal,
                               interpret=interpret)
    if mesh.empty:
        out = kernel(q, k, v, segments)
    else:
        spec = PartitionSpec(rows_axes, head_axis, None, None)
        out = jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(rows_axes, None)),
                            out_specs=spec, check_vma=False)(q, k, v, segments)
    return out.transpose(0, 2, 1, 3)[:, :length]


def _splash_axes(mesh, batch: int, heads: int, kv_heads: int):
    """The mesh axes splitting rows and heads: `data`, `fsdp` where they divide the batch; `tensor` where it
    divides both head counts (a query head then meets its own key head on the same device)."""
    if mesh.empty:
        return None, None
    rows = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    size = 1
    for axis in rows:
        size *= mesh.shape[axis]
    rows_axes = rows if rows and batch % size == 0 else None
    tensor = mesh.shape.get("tensor", 1)
    head_axis = "tensor" if tensor > 1 and heads % tensor == 0 and kv_heads % tensor == 0 else None
    return rows_axes, head_axis


def _splash_kernel(q, k, v, segments, *, heads: int, length: int, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    shape = (length, length)
    mask = masks.MultiHeadMask([masks.CausalMask(shape) if causal else masks.FullMask(shape)] * heads)
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(q=segments, kv=segments))


# ---- dense: any boolean mask ----------------------------------------------------------------------------------

def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *, implementation: str,
                    query_chunk: int = 0, kv_head_major: bool = False) -> jax.Array:
    """Attention under any boolean `mask` `[batch, 1, q_len, kv_len]` (True = attend). `k`, `v` are
    `[batch, kv_len, kv_heads, head_dim]`, or `[batch, kv_heads, kv_len, head_dim]` with `kv_head_major` (a KV
    cache's layer, read as it lies). Rows with no key to attend return the mean of `v` rather than NaN; such
    positions are padding and carry no loss. `query_chunk` > 0 attends that many queries at a time, each block
    rematerialised in the backward pass, so the fp32 scores exist for one block at a time."""
    length = q.shape[1]
    if query_chunk <= 0 or length <= query_chunk:
        return _dense(q, k, v, mask, implementation, kv_head_major)
    pad = -length % query_chunk
    if mask is None:
        mask = jnp.ones((q.shape[0], 1, length, k.shape[2 if kv_head_major else 1]), bool)
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)))
    blocks = (length + pad) // query_chunk
    q_blocks = jnp.moveaxis(q.reshape(q.shape[0], blocks, query_chunk, *q.shape[2:]), 1, 0)
    mask_blocks = jnp.moveaxis(mask.reshape(*mask.shape[:2], blocks, query_chunk, mask.shape[-1]), 2, 0)
    block = jax.checkpoint(lambda qb, mb: _dense(qb, k, v, mb, implementation, kv_head_major))
    out = jax.lax.map(lambda xs: block(*xs), (q_blocks, mask_blocks))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape)[:, :length]


def _dense(q, k, v, mask, implementation: str, kv_head_major: bool) -> jax.Array:
    """`xla`: `jax.nn.dot_product_attention` (token-major keys). `ours`: its math in head-major layout
    (`[batch, kv_heads, groups, len, head_dim]`) with a flash-style backward (`_head_attention`): the `small` LoRA
    train step on a 2-core CPU took 11.8 s against 13.9 s with XLA's lowering, which stores the probabilities and
    transposes them."""
    if implementation == "xla":
        if kv_head_major:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    batch, length, heads, dim = q.shape
    kh, vh = (k, v) if kv_head_major else (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
    kv_heads = kh.shape[1]
    qh = q.reshape(batch, length, kv_heads, heads // kv_heads, dim).transpose(0, 2, 3, 1, 4)
    out = _head_attention(qh, kh.astype(q.dtype), vh.astype(q.dtype), None if mask is None else mask[:, :, None])
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, dim)


def _scores(q, k, mask):
    """fp32 scaled logits `[b, n, g, t, s]`, masked with jax's large negative (a fully masked row: uniform)."""
    logits = jnp.einsum("bngtd,bnsd->bngts", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(q.shape[-1] ** -0.5)
    return logits if mask is None else jnp.where(mask, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))


def _softmax_parts(logits):
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnormalized = jnp.exp(logits - peak)
    return peak, jnp.sum(unnormalized, axis=-1, keepdims=True), unnormalized


@jax.custom_vjp
def _head_attention(q, k, v, mask):
    return _head_attention_fwd(q, k, v, mask)[0]


def _head_attention_fwd(q, k, v, mask):
    peak, total, unnormalized = _softmax_parts(_scores(q, k, mask))
    out = jnp.einsum("bngts,bnsd->bngtd", (unnormalized / total).astype(v.dtype), v)
    return out, (q, k, v, mask, out, peak, total)


def _head_attention_bwd(residuals, d_out):
    """Recomputes the probabilities from the row max and sum (as the forward made them) instead of keeping the
    `[b, n, g, t, s]` square from the forward, and uses `rowsum(dP * P) = rowsum(dO * O)`: one pass over the
    square fewer, and none stored (on a CPU the stored square and its softmax-backward fusion cost more than all
    of attention's matmuls)."""
    q, k, v, mask, out, peak, total = residuals
    probs = jnp.exp(_scores(q, k, mask) - peak) / total
    d_v = jnp.einsum("bngts,bngtd->bnsd", probs.astype(v.dtype), d_out)
    d_probs = jnp.einsum("bngtd,bnsd->bngts", d_out, v, preferred_element_type=jnp.float32)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = probs * (d_probs - row) * jnp.float32(q.shape[-1] ** -0.5)
    if mask is not None:
        d_logits = jnp.where(mask, d_logits, 0)
    d_logits = d_logits.astype(q.dtype)
    d_q = jnp.einsum("bngts,bnsd->bngtd", d_logits, k)
    d_k = jnp.einsum("bngts,bngtd->bnsd", d_logits, q)
    return d_q, d_k, d_v, None


_head_attention.defvjp(_head_attention_fwd, _head_attention_bwd)
