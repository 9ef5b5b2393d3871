"""The continuous engine: a fixed number of slots decode together, and when a row ends its slot takes the next
prompt while the others go on (JetStream's insert / generate: both jitted, fixed shapes).

A slot's cache region is `[prefix | suffix | new tokens]`. The prefix is a prompt up to its last image token
(system prompt and image), left-padded to its bucket; the suffix (the question) is left-padded to its own.
Requests with one `image_key` and the same prefix tokens (VLGuard's two questions on a safe image) share one
vision-tower pass and one prefix prefill when inserted together: each copies the prefix's keys and values into
its slot. Positions count real tokens only, so greedy output equals the static engine's. Each row stops at its
own stop tokens or token limit.

An image is a fixed-resolution model's pixels or an any-resolution model's `TiledImage` (`data.vision_inputs`): an
insert lays its prefixes' images out in fixed shapes (any-resolution: padded to the model's most crops and image
tokens), so images of every size, whatever their image-token counts, share one compiled insert.

With K adapters (`adapters`: K LoRA runs over this base) the slots split into K equal groups, group g serving
requests of adapter g: a decode step runs every base matmul once for all groups (`models.adapters`), an insert
runs one adapter's rows. On a mesh the slots split along data × fsdp; inserts and the finished rows' tokens are
replicated, so every process, running the same host loop on the same values, takes the same decisions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Hashable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlguard_jax.buckets import bucket
from vlguard_jax.data.vision_inputs import TiledImage, VisionInputs
from vlguard_jax.generate.sampling import PROMPT_BUCKETS, SamplingConfig, check_image, decoder, forward, pick
from vlguard_jax.generate.step import decode_step, layer_weights
from vlguard_jax.models.adapters import count_adapters, select_adapter, stack_adapters
from vlguard_jax.models.llama import KVCache, LlamaForCausalLM
from vlguard_jax.models.tiles import images_of
from vlguard_jax.parallel import check_rows, constrain, place_replicated


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: np.ndarray
    image: np.ndarray | TiledImage | None = None  # `VisionInputs.encode`'s, for the model's kind of images
    image_key: Hashable | None = None  # requests with one key show one image: it is encoded and prefilled once
    max_new_tokens: int | None = None  # default: the sampling config's (and never more)
    stop_ids: Sequence[int] | None = None  # default: the engine's
    adapter: int = 0


class Slots(NamedTuple):
    """Every slot's decoding state on device; `done` slots are free."""

    cache: KVCache
    mask: jax.Array  # [slots, cache length]: which cache positions hold real tokens
    token: jax.Array  # the token to emit next (sampled, not yet written)
    position: jax.Array  # position of the last token fed
    count: jax.Array  # tokens emitted
    limit: jax.Array
    stops: jax.Array  # [slots, stops], -1 pads
    done: jax.Array
    out: jax.Array  # [slots, max new tokens]
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Geometry:
    prefix: int  # bucketed prefix length (0: no request has one)
    suffix: int
    new: int  # the most new tokens of any request
    stops: int  # stop ids per row

    @property
    def prompt(self) -> int:
        return self.prefix + self.suffix


def split_point(prompt: np.ndarray, image_token_id: int | None) -> int:
    """Length of the shareable prefix: through the last image token, leaving at least one suffix token."""
    if image_token_id is None:
        return 0
    images = np.flatnonzero(prompt == image_token_id)
    return 0 if len(images) == 0 else min(int(images[-1]) + 1, len(prompt) - 1)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class Engine:
    """Compiles one decode function per (cache geometry, sampling settings) and one insert per (geometry, rows
    inserted, distinct prefixes among them), rounded up to powers of two; `compilations` counts traces, `stats`
    the work done."""

    def __init__(self, model, *, pad_id: int, stop_ids: Sequence[int], slots: int = 8,
                 buckets: Sequence[int] = PROMPT_BUCKETS, mesh: Mesh | None = None,
                 adapters: Sequence[nnx.State] | None = None, share_prefixes: bool = True):
        check_rows(slots, mesh)
        self.adapters = stack_adapters(adapters) if adapters else None
        self.groups = count_adapters(self.adapters) if self.adapters is not None else 1
        if slots % self.groups:
            raise ValueError(f"{slots} slots do not split evenly between {self.groups} adapters")
        self.mesh = mesh
        self.graphdef, self.state = nnx.split(model)
        text_only = isinstance(model, LlamaForCausalLM) or model.config.vision is None
        self.image_token_id = None if text_only else model.config.image_token_id
        self.vision = None if text_only else VisionInputs.of(model.config)
        self.text_config = decoder(model).config
        self.cache_dtype = decoder(model).model.dtype
        self.pad_id = pad_id
        self.stop_ids = tuple(stop_ids)
        self.slots = slots
        self.buckets = tuple(buckets)
        self.share_prefixes = share_prefixes
        self._compiled: dict = {}
        self.compilations = 0
        self.stats = collections.Counter()  # inserts, rows inserted, prefixes prefilled, decode calls

    # ---- the host loop -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig = SamplingConfig()) -> list[np.ndarray]:
        """Each request's new tokens, up to and including its stop token, in request order."""
        outputs: list = [None] * len(requests)
        for index, tokens in self.stream(requests, sampling):
            outputs[index] = tokens
        return outputs

    def stream(self, requests: Sequence[Request], sampling: SamplingConfig = SamplingConfig()
               ) -> Iterator[tuple[int, np.ndarray]]:
        """`(request index, new tokens)` as rows finish (not in request order)."""
        if not requests:
            return
        splits = [self._check(i, r) for i, r in enumerate(requests)]
        limits = [min(r.max_new_tokens or sampling.max_new_tokens, sampling.max_new_tokens) for r in requests]
        geometry = Geometry(
            prefix=0 if max(splits) == 0 else bucket(max(splits), self.buckets),
            suffix=bucket(max(len(r.prompt) - s for r, s in zip(requests, splits)), self.buckets),
            new=max(limits), stops=max(len(self._stops(r)) for r in requests))
        keys = [self._prefix_key(i, r, s) for i, (r, s) in enumerate(zip(requests, splits))]
        queues = [collections.deque(i for i, r in enumerate(requests) if r.adapter == g) for g in range(self.groups)]
        per_group = self.slots // self.groups
        owner: list[int | None] = [None] * self.slots
        slots = self._empty(geometry, sampling.seed)
        while True:
            for g, queue in enumerate(queues):
                free = [s for s in range(g * per_group, (g + 1) * per_group) if owner[s] is None]
                taken = _take(queue, keys, len(free), per_group)
                if taken:
                    slots = self._insert(slots, [requests[i] for i in taken], [splits[i] for i in taken],
                                         [keys[i] for i in taken], [limits[i] for i in taken], free, g, geometry,
                                         sampling)
                    for slot, index in zip(free, taken):
                        owner[slot] = index
            if all(o is None for o in owner):
                return
            want = np.array([min(_group_size(q, keys), per_group) if q else self.slots + 1 for q in queues], np.int32)
            slots, done, count, out = self._decode(slots, want, geometry, sampling)
            done, count, out = np.asarray(done), np.asarray(count), np.asarray(out)
            for slot, index in enumerate(owner):
                if index is not None and done[slot]:
                    owner[slot] = None
                    yield index, out[slot, : count[slot]]

    def _check(self, index: int, request: Request) -> int:
        check_image(self.vision, request.prompt, request.image, self.image_token_id, f"request {index}")
        if not 0 <= request.adapter < self.groups:
            raise ValueError(f"request {index}: adapter {request.adapter} is not one of the engine's {self.groups}")
        if len(request.prompt) == 0:
            raise ValueError(f"request {index}: an empty prompt")
        return split_point(np.asarray(request.prompt), self.image_token_id)

    def _stops(self, request: Request) -> tuple[int, ...]:
        return tuple(self.stop_ids if request.stop_ids is None else request.stop_ids) or (-1,)

    def _prefix_key(self, index: int, request: Request, split: int) -> Hashable:
        if not self.share_prefixes or split == 0 or request.image_key is None:
            return ("own", index)
        return (request.adapter, request.image_key, np.asarray(request.prompt[:split]).tobytes())

    # ---- device calls --------------------------------------------------------------------------------------

    def _on_mesh(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def _function(self, key, build, **jit_options):
        if key not in self._compiled:
            function = build()

            def count_and_run(*args):
                self.compilations += 1  # runs only while tracing
                return function(*args)
            self._compiled[key] = jax.jit(count_and_run, **jit_options)
        return self._compiled[key]

    def _model(self, state, adapters, adapter_index=None):
        """The model with every adapter's leaves stacked, or adapter `adapter_index`'s alone."""
        model = nnx.merge(self.graphdef, state)
        if adapters is not None:
            nnx.update(model, adapters if adapter_index is None else select_adapter(adapters, adapter_index))
        return model

    def _empty(self, geometry: Geometry, seed: int) -> Slots:
        def build():
            def empty(key):
                n, length = self.slots, geometry.prompt + geometry.new
                rows = lambda x: constrain(x, ("batch",) + (None,) * (x.ndim - 1))
                return Slots(KVCache.zeros(self.text_config, n, length, self.cache_dtype),
                             rows(jnp.zeros((n, length), bool)), *(rows(jnp.zeros(n, jnp.int32)) for _ in range(4)),
                             rows(jnp.full((n, geometry.stops), -1, jnp.int32)), rows(jnp.ones(n, bool)),
                             rows(jnp.full((n, geometry.new), self.pad_id, jnp.int32)), key)
            return empty

        with self._on_mesh():
            return self._function(("empty", geometry), build)(jax.random.key(seed))

    def _insert(self, slots: Slots, requests, splits, keys, limits, free, group, geometry, sampling) -> Slots:
        """Prefills `requests` (each distinct prefix once) into the `free` slots, on `group`'s adapter."""
        rows, distinct = _pow2(len(requests)), list(dict.fromkeys(keys))
        host = _insert_arrays(self, requests, splits, keys, distinct, limits, free, rows, _pow2(len(distinct)),
                              geometry)
        function = self._function(("insert", geometry, rows, _pow2(len(distinct)), sampling),
                                  lambda: self._insert_fn(geometry, sampling), donate_argnums=(2,))
        placed = jax.tree.map(lambda v: place_replicated(v, self.mesh), host)
        self.stats.update(inserts=1, rows_inserted=len(requests), prefixes_prefilled=len(distinct))
        with self._on_mesh():
            return function(self.state, self.adapters, slots, np.int32(group), placed)

    def _decode(self, slots: Slots, want: np.ndarray, geometry: Geometry, sampling: SamplingConfig):
        replicated = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())
        function = self._function(("decode", geometry, sampling), lambda: self._decode_fn(geometry, sampling),
                                  donate_argnums=(2,), out_shardings=(None, replicated, replicated, replicated))
        self.stats.update(decode_calls=1)
        with self._on_mesh():
            return function(self.state, self.adapters, slots, place_replicated(want, self.mesh))

    def _insert_fn(self, geometry: Geometry, sampling: SamplingConfig):
        P, Q = geometry.prefix, geometry.suffix

        def insert(state, adapters, slots: Slots, group, x) -> Slots:
            model = self._model(state, adapters, group)
            cfg, rows = self.text_config, x["suffix_ids"].shape[0]
            prefix_len = jnp.zeros(rows, jnp.int32)
            row_cache = KVCache.zeros(cfg, rows, P + Q, self.cache_dtype)
            row_mask = jnp.zeros((rows, P), bool)
            if P:
                positions = jnp.maximum(jnp.cumsum(x["prefix_mask"], axis=1) - 1, 0)
                cache = KVCache.zeros(cfg, x["prefix_ids"].shape[0], P, self.cache_dtype)
                _, cache = forward(model, x["prefix_ids"], x["images"], x["prefix_mask"], positions, cache, 0)
                of = x["prefix_of"]
                row_cache = KVCache(*(c.at[:, :, :, :P].set(p[:, of]) for c, p in zip(row_cache, cache)))
                row_mask = x["prefix_mask"][of]
                prefix_len = x["prefix_mask"].sum(axis=1, dtype=jnp.int32)[of]
            row_mask = jnp.concatenate([row_mask, x["suffix_mask"]], axis=1)
            positions = prefix_len[:, None] + jnp.maximum(jnp.cumsum(x["suffix_mask"], axis=1) - 1, 0)
            logits, row_cache = forward(model, x["suffix_ids"], None, row_mask, positions, row_cache, P)
            key, sub = jax.random.split(slots.key)
            first = pick(logits[:, -1], sub, 0, x["stops"], sampling)
            at = x["slot_of"]  # fillers point past the last slot and are dropped
            put = lambda target, value: target.at[at].set(value, mode="drop")
            cache = KVCache(*(c.at[:, at, :, : P + Q].set(r, mode="drop") for c, r in zip(slots.cache, row_cache)))
            full_mask = jnp.concatenate([row_mask, jnp.zeros((rows, geometry.new), bool)], axis=1)
            return Slots(cache, put(slots.mask, full_mask), put(slots.token, first), put(slots.position, positions[:, -1]),
                         put(slots.count, 0), put(slots.limit, x["limit"]), put(slots.stops, x["stops"]),
                         put(slots.done, False), put(slots.out, self.pad_id), key)

        return insert

    def _decode_fn(self, geometry: Geometry, sampling: SamplingConfig):
        """Decodes every slot until a group with waiting requests has room for its next prefix group, or all
        slots are free; returns the slots and, replicated, which are done, their counts and tokens."""
        per_group, start = self.slots // self.groups, geometry.prompt

        def decode(state, adapters, slots: Slots, want):
            model = self._model(state, adapters)
            layers = layer_weights(model)  # once per call where the backend would copy them every step
            cache_slots, new_slots = jnp.arange(slots.mask.shape[1]), jnp.arange(geometry.new)

            def cond(s: Slots):
                free = s.done.reshape(self.groups, per_group).sum(axis=1)
                return ~jnp.all(s.done) & ~jnp.any(free >= want)

            def body(s: Slots) -> Slots:
                emit = ~s.done
                out = jnp.where(emit[:, None] & (new_slots == s.count[:, None]), s.token[:, None], s.out)
                count = s.count + emit
                stopped = (s.token[:, None] == s.stops).any(axis=1) | (count >= s.limit)
                done = s.done | (emit & stopped)
                write = start + count - 1  # the emitted token's cache position
                mask = s.mask | (emit[:, None] & (cache_slots == write[:, None]))
                position = s.position + 1
                logits, cache = decode_step(model, layers, s.token, mask, position, s.cache, write)
                key, sub = jax.random.split(s.key)
                token = pick(logits, sub, count, s.stops, sampling)
                return Slots(cache, mask, token, position, count, s.limit, s.stops, done, out, key)

            slots = jax.lax.while_loop(cond, body, slots)
            return slots, slots.done, slots.count, slots.out

        return decode


def _take(queue: collections.deque, keys: list, free: int, per_group: int) -> list[int]:
    """Requests for `free` slots from the head of `queue`, whole prefix groups only (a group larger than the
    adapter's slots goes in parts); none when the next group does not fit yet."""
    taken: list[int] = []
    while queue and len(taken) < free:
        size = _group_size(queue, keys)
        if len(taken) + size > free and size <= per_group:
            break
        for _ in range(min(size, free - len(taken))):
            taken.append(queue.popleft())
    return taken


def _group_size(queue: collections.deque, keys: list) -> int:
    """How many requests at the head of `queue` share the first one's prefix (they are adjacent)."""
    first, size = keys[queue[0]], 0
    for index in queue:
        if keys[index] != first:
            break
        size += 1
    return size


def _insert_arrays(engine: Engine, requests, splits, keys, distinct, limits, free, rows, prefixes,
                   geometry: Geometry) -> dict:
    """Host arrays of one insert: distinct prefixes with their images (the model's image input, zeros where a
    prefix has none) and every row's suffix, left-padded; fillers up to the powers of two (fillers' slot index is
    past the last slot: dropped)."""
    P, Q = geometry.prefix, geometry.suffix
    x = {"prefix_ids": np.full((prefixes, P), engine.pad_id, np.int32), "prefix_mask": np.zeros((prefixes, P), bool),
         "suffix_ids": np.full((rows, Q), engine.pad_id, np.int32), "suffix_mask": np.zeros((rows, Q), bool),
         "prefix_of": np.zeros(rows, np.int32), "slot_of": np.full(rows, engine.slots, np.int32),
         "limit": np.ones(rows, np.int32), "stops": np.full((rows, geometry.stops), -1, np.int32)}
    x["suffix_mask"][:, -1] = True  # fillers: one visible token keeps their attention defined
    images = engine.vision.batch(prefixes) if engine.vision is not None and P else None
    first_row = {key: keys.index(key) for key in distinct}
    for p, key in enumerate(distinct):
        request, split = requests[first_row[key]], splits[first_row[key]]
        if split:
            x["prefix_ids"][p, P - split:] = request.prompt[:split]
            x["prefix_mask"][p, P - split:] = True
        if images is not None and request.image is not None:
            engine.vision.put(images, p, request.image)
    x["images"] = None if images is None else images_of(images)
    for row, (request, split, key, limit) in enumerate(zip(requests, splits, keys, limits)):
        suffix = request.prompt[split:]
        x["suffix_ids"][row, Q - len(suffix):] = suffix
        x["suffix_mask"][row] = False
        x["suffix_mask"][row, Q - len(suffix):] = True
        x["prefix_of"][row] = distinct.index(key)
        x["slot_of"][row] = free[row]
        x["limit"][row] = limit
        stops = engine._stops(request)
        x["stops"][row, : len(stops)] = stops
    return x
