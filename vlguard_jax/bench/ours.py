"""Our side of the benchmark: the jitted train step and `Generator`, on a random-weight model of a bench size."""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlguard_jax.bench.shapes import BenchSize
from vlguard_jax.bench.traffic import decode_traffic
from vlguard_jax.bench.workload import pixels, prompt_ids, train_batch
from vlguard_jax.config import Config, LoraSection, ModelConfig, TrainConfig
from vlguard_jax.generate import Generator, SamplingConfig
from vlguard_jax.parallel import make_mesh
from vlguard_jax.train.setup import build, make_model

LORA_DROPOUT = 0.05


def run_config(size: BenchSize, mode: str, dtype) -> Config:
    """The size as a run config: the benchmark times what `train` would run for it."""
    lora = LoraSection(size.lora_rank, 2.0 * size.lora_rank, LORA_DROPOUT, size.lora_targets)
    model = ModelConfig(dtype=jnp.dtype(dtype).name, remat=size.remat)
    return Config(model=model, train=TrainConfig(mode=mode, lora=lora))


def train_step(size: BenchSize, mode: str, dtype) -> tuple[Callable[[], None], dict]:
    """A warmed-up `run()` doing one optimizer step, and compile facts (seconds, XLA's FLOPs of the step)."""
    setup = build(run_config(size, mode, dtype), make_mesh(devices=jax.devices()[:1]), llava=size.model)
    state, frozen = setup.init_state(), setup.frozen
    batch = {k: jnp.asarray(v) for k, v in train_batch(size.model, size.train_rows, size.train_len).items()}
    start = time.perf_counter()
    with jax.set_mesh(setup.mesh):
        compiled = setup.train_step(accum_steps=1).lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def run() -> None:
        holder[0], metrics = compiled(holder[0], frozen, batch)
        metrics["loss"].block_until_ready()

    run()
    cost = compiled.cost_analysis() or {}
    return run, {"compile_s": compile_s, "xla_flops_scan_bodies_once": float(cost.get("flops", 0.0))}


def decode(size: BenchSize, rows: int, prompt_len: int, new_tokens: int, dtype) -> tuple[Callable[[], None], dict]:
    """A warmed-up greedy `run()` producing exactly `new_tokens` per row (no stop id), and facts: the seconds of the
    first call (compile + one run) and the decode step's memory traffic (`traffic.decode_traffic`)."""
    model = make_model(size.model, run_config(size, "full", dtype))
    prompts = list(prompt_ids(size.model, rows, prompt_len))
    images = list(pixels(size.model, rows))
    generator = Generator(model, pad_id=0, stop_ids=[-1], batch_size=rows, buckets=(prompt_len,))
    sampling = SamplingConfig(max_new_tokens=new_tokens)
    start = time.perf_counter()
    out = generator.generate(prompts, images, sampling)
    first_call_s = time.perf_counter() - start
    if any(len(o) != new_tokens for o in out):
        raise RuntimeError(f"generation stopped before {new_tokens} tokens: the timing would not compare")

    def run() -> None:
        np.asarray(generator.generate(prompts, images, sampling)[0])

    return run, {"first_call_s": first_call_s, **decode_traffic(model, rows, prompt_len + new_tokens)}
