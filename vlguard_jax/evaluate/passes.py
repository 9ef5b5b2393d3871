"""Benchmarks' prompts through the continuous engine, their results written chunk by chunk in benchmark order.

Chunks of the invocation's benchmarks are interleaved (chunk 0 of each, then chunk 1, …), so the subsets that
show the same images (VLGuard's Safe-Safe and Safe-Unsafe questions) meet in one engine pass, where prompts on
one image are placed side by side and share its encoding and prefix. A pass takes chunks up to `window` prompts:
their images are in memory, and the slots drain only at a pass's end. A chunk is written (judged, appended) as
soon as it and its benchmark's earlier chunks are finished, so an interrupted run keeps all but the chunks in
flight.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from vlguard_jax.data.vision_inputs import TiledImage
from vlguard_jax.evaluate.benchmarks import Benchmark, Prompt
from vlguard_jax.generate import Engine, Request, SamplingConfig

WINDOW = 256


@dataclasses.dataclass
class Chunk:
    benchmark: Benchmark
    prompts: list[Prompt]  # those not yet written
    run: int = 0  # the adapter whose answers these are (evaluate_adapters)


@dataclasses.dataclass
class Prepared:
    """A chunk's prompts that encoded (ids, images) and those that did not (skip records)."""

    kept: list[Prompt]
    ids: list[np.ndarray]
    images: list[np.ndarray | TiledImage | None]  # as the model takes them (`VisionInputs.encode`)
    failed: list[dict]


def interleave(per_benchmark: Sequence[Sequence[Chunk]]) -> list[Chunk]:
    longest = max((len(chunks) for chunks in per_benchmark), default=0)
    return [chunks[i] for i in range(longest) for chunks in per_benchmark if i < len(chunks)]


def windows(chunks: Sequence[Chunk], window: int) -> Iterator[list[Chunk]]:
    batch, size = [], 0
    for chunk in chunks:
        if batch and size + len(chunk.prompts) > window:
            yield batch
            batch, size = [], 0
        batch.append(chunk)
        size += len(chunk.prompts)
    if batch:
        yield batch


def image_order(keys: Sequence) -> list[int]:
    """A stable order placing requests with the same (non-None) image key side by side."""
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(i if key is None else key, i)
    return sorted(range(len(keys)), key=lambda i: (first[i if keys[i] is None else keys[i]], i))


def run(engine: Engine, chunks: Sequence[Chunk], sampling: SamplingConfig, prepare: Callable[[Chunk], Prepared],
        complete: Callable[[Chunk, Prepared, list[np.ndarray]], None], window: int = WINDOW) -> None:
    """Generates every chunk's prompts; `complete(chunk, prepared, tokens)` is called once per chunk, in each
    benchmark's chunk order."""
    for part in windows(chunks, window):
        prepared = [prepare(chunk) for chunk in part]
        owners = [(c, j) for c, p in enumerate(prepared) for j in range(len(p.kept))]
        requests = [Request(prepared[c].ids[j], prepared[c].images[j], prepared[c].kept[j].image,
                            adapter=part[c].run) for c, j in owners]
        order = image_order([r.image_key for r in requests])
        tokens = [[None] * len(p.kept) for p in prepared]
        missing = [len(p.kept) for p in prepared]
        heads = {}  # (run, benchmark) -> its chunks in this pass not yet completed, in order
        for c, chunk in enumerate(part):
            heads.setdefault((chunk.run, chunk.benchmark.name), []).append(c)

        def flush(key) -> None:
            queue = heads[key]
            while queue and missing[queue[0]] == 0:
                c = queue.pop(0)
                complete(part[c], prepared[c], tokens[c])

        for key in heads:
            flush(key)  # chunks whose every prompt failed to encode
        for position, result in engine.stream([requests[i] for i in order], sampling):
            c, j = owners[order[position]]
            tokens[c][j] = result
            missing[c] -= 1
            flush((part[c].run, part[c].benchmark.name))
