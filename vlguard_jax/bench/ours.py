"""Our side of the benchmark: the jitted train step and `Generator`, on a random-weight model of a bench size."""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlguard_jax.bench.shapes import BenchSize
from vlguard_jax.bench.workload import pixels, prompt_ids, train_batch
from vlguard_jax.generate import Generator, SamplingConfig
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.lora import LoraConfig, apply_lora
from vlguard_jax.train.optimizer import OptimizerConfig, build_optimizer
from vlguard_jax.train.step import init_state, make_train_step
from vlguard_jax.train.trainable import split_model

LORA_DROPOUT = 0.05


def build(size: BenchSize, mode: str, dtype) -> LlavaForConditionalGeneration:
    model = LlavaForConditionalGeneration(size.model, dtype=dtype, param_dtype=dtype, remat=size.remat,
                                          rngs=nnx.Rngs(0))
    if mode == "lora":
        apply_lora(model, LoraConfig(size.lora_rank, 2.0 * size.lora_rank, LORA_DROPOUT), nnx.Rngs(1))
    return model


def train_step(size: BenchSize, mode: str, dtype) -> tuple[Callable[[], None], dict]:
    """A warmed-up `run()` doing one optimizer step, and compile facts (seconds, XLA's FLOPs of the step)."""
    graphdef, trainable, frozen = split_model(build(size, mode, dtype), mode)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nnx.to_pure_dict(trainable))
    tx = build_optimizer(OptimizerConfig(), params, total_steps=1000)
    state = jax.jit(lambda p: init_state(p, tx, 0))(params)
    batch = {k: jnp.asarray(v) for k, v in train_batch(size.model, size.train_rows, size.train_len).items()}
    start = time.perf_counter()
    compiled = jax.jit(make_train_step(graphdef, trainable, tx), donate_argnums=0).lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def run() -> None:
        holder[0], metrics = compiled(holder[0], frozen, batch)
        metrics["loss"].block_until_ready()

    run()
    cost = compiled.cost_analysis() or {}
    return run, {"compile_s": compile_s, "xla_flops_scan_bodies_once": float(cost.get("flops", 0.0))}


def decode(size: BenchSize, rows: int, prompt_len: int, new_tokens: int, dtype) -> tuple[Callable[[], None], float]:
    """A warmed-up greedy `run()` producing exactly `new_tokens` per row (no stop id), and the seconds of the
    first call (compile + one run)."""
    model = build(size, "none", dtype)
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

    return run, first_call_s
