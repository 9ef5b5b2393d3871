"""How many continuous-engine slots the devices' memory holds (`eval --batch-size auto`).

The engine's two kinds of program, an insert that prefills rows into slots and a decode step over every slot, are
compiled ahead of time with abstract weights and slots (nothing is allocated) at two slot counts. XLA's memory
analysis gives each program's per-device bytes; what the slots' own state (the KV cache at the longest prompt's
bucketed length + new tokens) does not explain is split into fixed bytes (weights, buffers) and bytes per row
computed (activations). The count chosen is the largest multiple of the mesh's data × fsdp whose decode step and
first insert fit in a fraction of the device's memory limit. The insert fills every slot at once with its rows
rounded up to a power of two, as the engine rounds them: that, not the decode step, often binds.

The programs are equivalents built from the engine's public pieces (`forward`, `decode_step`, `pick`, `KVCache`):
one prefill of the whole prompt with its image (in the engine's image arrays: an any-resolution image padded to the
model's most crops), where the engine prefills the shared prefix and the suffix in turn, and one decode step with
the layers' weights sliced as the engine slices them, where the engine loops. Their buffers are the engine's, if
anything larger. Devices that report no memory limit (CPU) keep `DEFAULT_SLOTS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlguard_jax.buckets import bucket
from vlguard_jax.config import ConfigError
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.generate.engine import Geometry, split_point
from vlguard_jax.generate.sampling import PROMPT_BUCKETS, SamplingConfig, decoder, forward, pick
from vlguard_jax.generate.step import decode_step, layer_weights
from vlguard_jax.models.llama import KVCache
from vlguard_jax.models.tiles import images_of
from vlguard_jax.parallel import fit_spec, logical_to_spec

DEFAULT_SLOTS = 8  # where the devices report no memory limit (CPU): the engine's default
FRACTION = 0.9  # of the device's memory limit the programs may fill: the rest is left to fragmentation
MAX_SLOTS = 256  # an evaluation pass holds 256 prompts (`evaluate.passes.WINDOW`): more slots would stay idle
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Per-device bytes of one program: `fixed + per_slot × slots + per_row × rows computed`."""

    fixed: float
    per_slot: float  # the slots' state, held between calls (KV cache, masks, tokens)
    per_row: float  # what each row computed adds (activations, its inputs)

    def at(self, slots: int, rows: int) -> float:
        return self.fixed + self.per_slot * slots + self.per_row * rows


@dataclasses.dataclass(frozen=True)
class Capacity:
    slots: int
    reason: str  # how the count was chosen, as `eval` prints it
    limit: int | None = None  # the device's memory limit, bytes
    decode: Footprint | None = None
    insert: Footprint | None = None


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.1f} MiB"


def fit(slots: tuple[int, int], measured: tuple[float, float], per_slot: float) -> Footprint:
    """The footprint of a program `measured` (bytes) at two slot counts, each computing as many rows as it has
    slots; the slots' state, `per_slot` bytes each, is known from their shapes."""
    (n1, n2), (b1, b2) = slots, measured
    per_row = (b2 - b1) / (n2 - n1) - per_slot
    return Footprint(b1 - (per_slot + per_row) * n1, per_slot, per_row)


def pow2(n: int) -> int:
    """The rows the engine computes for an insert of `n` requests."""
    return 1 << max(n - 1, 0).bit_length()


def slots_that_fit(decode: Footprint, insert: Footprint, limit: float, shards: int, fraction: float = FRACTION,
                   cap: int = MAX_SLOTS) -> int:
    """The largest multiple of `shards` (the mesh's data × fsdp) up to `cap` (at least `shards`) whose decode step
    and first insert (every slot at once, rows rounded up to a power of two) fit in `fraction × limit` bytes; 0
    when not even `shards` slots do."""
    budget = fraction * limit
    fits = lambda n: decode.at(n, n) <= budget and insert.at(n, pow2(n)) <= budget
    return max((n for n in range(shards, max(cap, shards) + 1, shards) if fits(n)), default=0)


def memory_limit(devices: Sequence[jax.Device]) -> int | None:
    """The smallest `bytes_limit` of `devices` (what XLA's allocator may use); None where a device reports none
    (CPU)."""
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    return None if not limits or None in limits else int(min(limits))


def geometry(prompts: Sequence[np.ndarray], image_token_id: int | None, max_new_tokens: int,
             buckets: Sequence[int] = PROMPT_BUCKETS) -> Geometry:
    """The cache geometry the engine gives these prompts together (`Engine.stream`'s): bucketed image prefix and
    suffix, then the new tokens."""
    splits = [split_point(np.asarray(p), image_token_id) for p in prompts]
    prefix = max(splits, default=0)
    suffix = max((len(p) - s for p, s in zip(prompts, splits)), default=1)
    return Geometry(prefix=0 if prefix == 0 else bucket(prefix, buckets), suffix=bucket(suffix, buckets),
                    new=max_new_tokens, stops=1)


class _Slots(NamedTuple):
    """The slots' state the engine holds between calls (its `Slots`, less the per-row scalars)."""

    cache: KVCache
    mask: jax.Array
    token: jax.Array
    position: jax.Array
    out: jax.Array


def _abstract(shape, dtype, axes, mesh: Mesh | None) -> jax.ShapeDtypeStruct:
    sharding = None if mesh is None else NamedSharding(mesh, fit_spec(logical_to_spec(axes), shape, mesh))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _abstract_slots(model, slots: int, geom: Geometry, mesh: Mesh | None) -> _Slots:
    cfg, dtype, length = decoder(model).config, decoder(model).model.dtype, geom.prompt + geom.new
    cache = _abstract((cfg.num_layers, slots, cfg.num_kv_heads, length, cfg.head_dim), dtype,
                      ("layers", "batch", "kv_heads", "length", None), mesh)
    rows = lambda *shape, dtype=jnp.int32: _abstract((slots, *shape), dtype, ("batch",) + (None,) * len(shape), mesh)
    return _Slots(KVCache(cache, cache), rows(length, dtype=jnp.bool_), rows(), rows(), rows(geom.new))


def _device_bytes(tree) -> int:
    """Bytes of one device's shard of every leaf."""
    shard = lambda a: a.shape if a.sharding is None else a.sharding.shard_shape(a.shape)
    return sum(math.prod(shard(a)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def slot_bytes(model, geom: Geometry, mesh: Mesh | None, slots: int = 1) -> float:
    """Per-device bytes of one slot's state: its KV cache rows above all."""
    return _device_bytes(_abstract_slots(model, slots, geom, mesh)) / slots


def program_bytes(compiled: jax.stages.Compiled, platform: str) -> int:
    """A compiled program's per-device footprint: libtpu's peak on TPU; elsewhere arguments + outputs − donated
    + temporaries (as `vlguard-jax plan` counts them)."""
    memory = compiled.memory_analysis()
    if platform == "tpu":
        return int(memory.peak_memory_in_bytes)
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
               + memory.temp_size_in_bytes)


def measure(model, geom: Geometry, slots: int, mesh: Mesh | None = None,
            sampling: SamplingConfig = SamplingConfig()) -> dict[str, int]:
    """`{"decode": bytes, "insert": bytes}`: the per-device footprint of a decode step over `slots` slots and of
    an insert filling them all, compiled with abstract weights and slots for `model`'s shapes and shardings."""
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                         state)
    held = _abstract_slots(model, slots, geom, mesh)
    replicated = lambda shape, dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=None if mesh is None else NamedSharding(mesh, PartitionSpec()))
    stops = jnp.full((1,), -1, jnp.int32)
    cfg, cache_dtype = decoder(model).config, decoder(model).model.dtype
    length, prompt = geom.prompt + geom.new, geom.prompt
    vision = getattr(model.config, "vision", None)

    def decode(state, s: _Slots) -> _Slots:
        write = jnp.full(slots, prompt, jnp.int32)
        mask = s.mask | (jnp.arange(length) == write[:, None])
        model = nnx.merge(graphdef, state)  # the engine's decode: each layer's weights sliced once, then the step
        logits, cache = decode_step(model, layer_weights(model), s.token, mask, s.position, s.cache, write)
        token = pick(logits, jax.random.key(0), 0, stops, sampling)
        return _Slots(cache, mask, token, s.position + 1, s.out.at[:, 0].set(token))

    def insert(state, s: _Slots, ids, images, row_mask) -> _Slots:
        positions = jnp.maximum(jnp.cumsum(row_mask, axis=1) - 1, 0)
        row_cache = KVCache.zeros(cfg, ids.shape[0], prompt, cache_dtype)
        logits, row_cache = forward(nnx.merge(graphdef, state), ids, images, row_mask, positions, row_cache, 0)
        token = pick(logits[:, -1], jax.random.key(0), 0, stops, sampling)
        at = jnp.arange(ids.shape[0])  # rows past the last slot are dropped, as the engine drops its fillers
        put = lambda target, value: target.at[at].set(value, mode="drop")
        cache = KVCache(*(c.at[:, at, :, :prompt].set(r, mode="drop") for c, r in zip(s.cache, row_cache)))
        full = jnp.concatenate([row_mask, jnp.zeros((ids.shape[0], geom.new), bool)], axis=1)
        return _Slots(cache, put(s.mask, full), put(s.token, token), put(s.position, positions[:, -1]), s.out)

    images = None
    if vision is not None and geom.prefix:  # the engine's image arrays (any-resolution: padded crops and plans)
        row = VisionInputs.of(model.config).batch(1)
        images = images_of({name: replicated((slots, *a.shape[1:]), a.dtype) for name, a in row.items()})
    inputs = (replicated((slots, prompt), jnp.int32), images, replicated((slots, prompt), jnp.bool_))
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
        programs = {"decode": jax.jit(decode, donate_argnums=1).lower(state, held),
                    "insert": jax.jit(insert, donate_argnums=1).lower(state, held, *inputs)}
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    return {name: program_bytes(lowered.compile(), platform) for name, lowered in programs.items()}


def estimate(model, geom: Geometry, mesh: Mesh | None, limit: int, sampling: SamplingConfig = SamplingConfig(),
             fraction: float = FRACTION, cap: int = MAX_SLOTS) -> Capacity:
    """The slot count for a device memory `limit` (bytes): two compiles of each program, at one and two slots per
    data × fsdp shard (see the module's docstring)."""
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    counts = (shards, 2 * shards)
    measured = [measure(model, geom, n, mesh, sampling) for n in counts]
    per_slot = slot_bytes(model, geom, mesh, shards)
    decode, insert = (fit(counts, tuple(m[name] for m in measured), per_slot) for name in ("decode", "insert"))
    slots = slots_that_fit(decode, insert, limit, shards, fraction, cap)
    where = (f"per device {_size(decode.fixed)} fixed + {_size(per_slot + decode.per_row)} per slot (its cache of "
             f"{geom.prompt + geom.new} tokens: {_size(per_slot)}), an insert {_size(insert.per_row)} per row, within "
             f"{fraction:.0%} of {_size(limit)}")
    if slots == 0:
        raise ConfigError(f"not even {shards} slots (one per data × fsdp device) fit: {where}; shard the model "
                          f"over more devices (--mesh), use --dtype bfloat16 or fewer --max-new-tokens")
    return Capacity(slots, f"auto: {where}", limit, decode, insert)
