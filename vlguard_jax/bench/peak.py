"""The peak MFU is measured against: the chip's datasheet peak on an accelerator, else the best of repeated matmul
probes taken through the run; and MFU figures flagged when they cannot be true.

One probe at the start of a run measured a loaded CPU: torch's `small` full step then showed "MFU 102.1%".
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp

# Dense bf16 FLOP/s per chip from the vendors' datasheets (no sparsity), matched as substrings of `device_kind`,
# first match wins: PCIe and NVL cards before the SXM ones ("NVIDIA H100 80GB HBM3"), v5e ("TPU v5 lite") before
# v5p (its kind is "TPU v5"); "TPU v6" is v6e ("TPU v6 lite"); a GH200's GPU is an H100 SXM's.
DATASHEET_PEAK_FLOPS = {
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H200": 989e12, "H100": 989e12,
    "A100": 312e12, "L4": 121e12,
    "TPU v6": 918e12, "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v4": 275e12,
}


def datasheet_peak(device_kind: str) -> float | None:
    return next((flops for name, flops in DATASHEET_PEAK_FLOPS.items() if name in device_kind), None)


def mfu(model_flops_per_s: float, peak_flops_per_s: float) -> dict:
    """MFU and whether it is one: above 100% the step outran the peak it is divided by, so the measurement failed
    (a probe slowed by load, a datasheet entry that is not this chip's); the figure is kept, flagged."""
    value = model_flops_per_s / peak_flops_per_s
    return {"mfu": value, "mfu_valid": value <= 1.0}


def format_mfu(figures: dict) -> str:
    return f"MFU {figures['mfu']:.1%}" if figures["mfu_valid"] else "MFU n/a (measurement failed: >100%)"


class PeakProbes:
    """Matmul peak probes taken through a run (before and after each size's measurements): load from other work
    only lowers a probe, so the best one is the closest to what the device does."""

    def __init__(self, probe: Callable[[], dict]):
        self.probe = probe  # returns at least {"flops_per_s": …}, as `measured_matmul_peak`
        self.flops_per_s: list[float] = []
        self.last: dict = {}

    def take(self) -> float:
        self.last = self.probe()
        self.flops_per_s.append(self.last["flops_per_s"])
        return self.last["flops_per_s"]

    def reference(self, datasheet: float | None) -> dict:
        """The peak MFU divides by: the datasheet's where the chip is in it, else the best probe so far."""
        if datasheet is not None:
            return {"flops_per_s": datasheet, "source": "datasheet"}
        return {"flops_per_s": max(self.flops_per_s), "source": f"best of {len(self.flops_per_s)} matmul probes"}


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
