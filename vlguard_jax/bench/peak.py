"""The device's practical peak (dense matmul throughput measured in this run) and datasheet peaks."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 FLOP/s per chip from the vendors' datasheets (no sparsity), matched against `device_kind`.
DATASHEET_PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12,
}


def datasheet_peak(device_kind: str) -> float | None:
    return next((flops for name, flops in DATASHEET_PEAK_FLOPS.items() if name in device_kind), None)


def compute_dtype() -> jnp.dtype:
    """bf16 on accelerators; fp32 on CPU, where XLA upcasts bf16 matmuls and they only run slower."""
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)


def measured_matmul_peak(repeats: int = 5) -> dict:
    """Best FLOP/s of a large square matmul chain in `compute_dtype` (one jit call runs `chain` matmuls)."""
    size, chain = (2048, 4) if jax.default_backend() == "cpu" else (8192, 50)
    dtype = compute_dtype()
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (size, size), dtype)
    b = jax.random.normal(keys[1], (size, size), dtype) / size ** 0.5

    @jax.jit
    def run(x, w):
        return jax.lax.fori_loop(0, chain, lambda _, y: y @ w, x)

    run(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return {"flops_per_s": 2 * size ** 3 * chain / best, "size": size, "dtype": dtype.name}
