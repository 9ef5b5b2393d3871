"""The static engine: one jitted prefill of a left-padded batch, then the whole decode loop on device.

Prompts are left-padded to a length bucket and the batch is padded to a fixed size, so one compiled function
serves every batch of a benchmark. Decoding is a single `lax.while_loop` of `step.decode_step` over a KV cache
(on a CPU, the layers' weights sliced before it); each row stops at its first stop token (EOS by default) or its own token
limit, and the loop ends when every row has stopped: a batch costs its longest row (`engine.Engine` refills a
finished row's slot instead). It also gives the next token's log-probabilities of a batch of prompts
(multiple-choice scoring).

On a mesh the weights stay sharded as the model holds them (fsdp / tensor), the batch is split along
`data` × `fsdp` and the KV cache along batch and kv heads. Every process passes the same host batch and takes
the devices' rows from it; the generated tokens come back replicated, so every process (one of which writes)
sees all rows.

A text-only decoder (`LlamaForCausalLM`, from `load_language_model`) runs the same way, with every image None. An
any-resolution model's images (`TiledImage`s) are laid out in `data.vision_inputs`' fixed shapes: one compile
serves images of every size.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlguard_jax.buckets import bucket
from vlguard_jax.data.vision_inputs import TiledImage, VisionInputs
from vlguard_jax.generate.sampling import PROMPT_BUCKETS, SamplingConfig, check_image, decoder, forward, pick
from vlguard_jax.generate.step import decode_step, layer_weights
from vlguard_jax.models.llama import KVCache, LlamaForCausalLM
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.tiles import images_of
from vlguard_jax.parallel import check_rows, place_rows


def _decode(graphdef, state, input_ids, attention_mask, images, limits, stop_ids, key, *,
            sampling: SamplingConfig, pad_id: int, cache_dtype):
    """`limits`: each row's most new tokens (≤ `sampling.max_new_tokens`)."""
    model = nnx.merge(graphdef, state)
    max_new_tokens = sampling.max_new_tokens
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    cache = KVCache.zeros(decoder(model).config, batch, total, cache_dtype)
    cache_mask = jnp.zeros((batch, total), bool).at[:, :prompt_len].set(attention_mask.astype(bool))
    logits, cache = forward(model, input_ids, images, cache_mask, positions, cache, 0)
    key, sub = jax.random.split(key)
    token = pick(logits[:, -1], sub, 0, stop_ids, sampling)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros(batch, bool)
    last_position = positions[:, -1]
    layers = layer_weights(model)

    def cond(carry):
        i, _, _, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, cache_mask, token, position, done, out, key = carry
        out = out.at[:, i].set(jnp.where(done, pad_id, token))
        done = done | jnp.isin(token, stop_ids) | (i + 1 >= limits)
        position = position + 1
        cache_mask = cache_mask.at[:, prompt_len + i].set(True)
        logits, cache = decode_step(model, layers, token, cache_mask, position, cache, prompt_len + i)
        key, sub = jax.random.split(key)
        return i + 1, cache, cache_mask, pick(logits, sub, i + 1, stop_ids, sampling), position, done, out, key

    carry = (jnp.int32(0), cache, cache_mask, token, last_position, done, out, key)
    return jax.lax.while_loop(cond, body, carry)[6]


def _next_token_log_probs(graphdef, state, input_ids, attention_mask, images):
    model = nnx.merge(graphdef, state)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    logits = forward(model, input_ids, images, attention_mask, positions)
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)


class Generator:
    """Compiles once per (batch size, prompt bucket, sampling settings) and reuses the executable.

    `mesh`: the mesh the model's weights are on; `batch_size` must divide over its `data` × `fsdp` devices.
    `model`: a LLaVA, or a text-only `LlamaForCausalLM` (then every image must be None)."""

    def __init__(self, model: LlavaForConditionalGeneration | LlamaForCausalLM, *, pad_id: int,
                 stop_ids: Sequence[int], batch_size: int = 8, buckets: Sequence[int] = PROMPT_BUCKETS,
                 mesh: Mesh | None = None):
        check_rows(batch_size, mesh)
        self.mesh = mesh
        self.graphdef, self.state = nnx.split(model)
        self.text_only = isinstance(model, LlamaForCausalLM) or model.config.vision is None
        self.config = model.config
        self.vision = None if self.text_only else VisionInputs.of(model.config)
        self.pad_id = pad_id
        self.stop_ids = jnp.asarray(list(stop_ids), jnp.int32)
        self.batch_size = batch_size
        self.buckets = tuple(buckets)
        self.cache_dtype = decoder(model).model.dtype
        self._compiled = {}
        self._log_probs = None
        self.compilations = 0

    def _replicated(self):
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

    def _function(self, sampling: SamplingConfig):
        key = (sampling.max_new_tokens, sampling.min_new_tokens, sampling.temperature, sampling.top_p)
        if key not in self._compiled:
            def count_and_decode(*args):
                self.compilations += 1  # runs only while tracing
                return _decode(*args, sampling=sampling, pad_id=self.pad_id, cache_dtype=self.cache_dtype)
            self._compiled[key] = jax.jit(count_and_decode, out_shardings=self._replicated())
        return self._compiled[key]

    def _batch(self, prompts: Sequence[np.ndarray], images: Sequence[np.ndarray | TiledImage | None]) -> list:
        """ids, mask and the images (None for a text-only model) of the prompts left-padded to their bucket, filler
        rows up to the batch size, placed on the mesh from a host copy every process holds (each device takes its
        rows)."""
        if len(prompts) > self.batch_size:
            raise ValueError(f"{len(prompts)} prompts exceed the generator's batch size {self.batch_size}")
        for row, (prompt, image) in enumerate(zip(prompts, images)):
            check_image(self.vision, prompt, image, None if self.text_only else self.config.image_token_id,
                        f"prompt {row}")
        length = bucket(max(len(p) for p in prompts), self.buckets)
        ids = np.full((self.batch_size, length), self.pad_id, np.int32)
        mask = np.zeros((self.batch_size, length), bool)
        arrays = None if self.text_only else self.vision.batch(self.batch_size)
        for row, (prompt, image) in enumerate(zip(prompts, images)):
            ids[row, length - len(prompt):] = prompt
            mask[row, length - len(prompt):] = True
            if image is not None:
                self.vision.put(arrays, row, image)
        mask[len(prompts):, -1] = True  # filler rows: one visible token keeps their attention well defined
        place = lambda a: place_rows(a, self.mesh)
        return [place(ids), place(mask), None if arrays is None else jax.tree.map(place, images_of(arrays))]

    def _run(self, function, *args) -> np.ndarray:
        with contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh):
            return np.asarray(function(self.graphdef, self.state, *args))

    def generate(self, prompts: Sequence[np.ndarray], images: Sequence[np.ndarray | TiledImage | None],
                 sampling: SamplingConfig = SamplingConfig(),
                 max_new_tokens: Sequence[int] | None = None) -> list[np.ndarray]:
        """Token ids of each prompt's continuation, up to and including its stop token. `max_new_tokens`: each
        prompt's own limit (at most the sampling config's); the batch still decodes until its longest row ends."""
        limits = np.full(self.batch_size, sampling.max_new_tokens, np.int32)
        if max_new_tokens is not None:
            limits[: len(prompts)] = np.minimum(max_new_tokens, sampling.max_new_tokens)
        out = self._run(self._function(sampling), *self._batch(prompts, images), place_rows(limits, self.mesh),
                        self.stop_ids, jax.random.key(sampling.seed))
        results = []
        for row in range(len(prompts)):
            tokens = out[row, : limits[row]]
            stops = np.flatnonzero(np.isin(tokens, np.asarray(self.stop_ids)))
            results.append(tokens[: stops[0] + 1] if len(stops) else tokens)
        return results

    def next_token_log_probs(self, prompts: Sequence[np.ndarray], images: Sequence[np.ndarray | TiledImage | None]
                             ) -> np.ndarray:
        """fp32 log-probabilities `[len(prompts), vocab]` of the token after each prompt (one prefill)."""
        if self._log_probs is None:
            self._log_probs = jax.jit(_next_token_log_probs, out_shardings=self._replicated())
        return self._run(self._log_probs, *self._batch(prompts, images))[: len(prompts)]
