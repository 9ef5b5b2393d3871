"""`vlguard-jax plan --audit`: does a Llama Guard judge fit a TPU slice, and how fast could a data audit go?

A data audit with `--threshold` costs about one prefill per exchange: `Generator.next_token_log_probs`, the jitted
`generate.static._next_token_log_probs` over prompts left-padded to one length bucket, `--batch-size` rows split
over the mesh's data × fsdp devices, the judge's weights in its dtype where `load_language_model(mesh=…)` puts
them. That same function is lowered here over abstract weights and prompts (nothing allocated) and compiled for
the devices: for a TPU slice by libtpu, whose HBM check gives the verdict, as `vlguard_jax.plan` does for the train
step (whose helpers it shares).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlguard_jax.config import ConfigError
from vlguard_jax.generate.static import _next_token_log_probs
from vlguard_jax.models.config import LlavaConfig, TextConfig
from vlguard_jax.models.llama import LlamaForCausalLM
from vlguard_jax.parallel import logical_to_spec, make_mesh, variable_sharding
from vlguard_jax.plan import (compile_for, custom_calls, known_architecture, largest_that_fits, peak_bytes,
                              per_device_bytes, resolve_devices, slice_verdict)
from vlguard_jax.topology import compile_verdict, device_kind

# Peak bf16 FLOP/s per chip, by the device kind libtpu reports: Google Cloud's TPU docs ("Peak compute per chip
# (bf16)"), cloud.google.com/tpu/docs/v4, /v5e, /v5p and /v6e.
PEAK_BF16_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12}


def plan_audit(architecture: str | LlavaConfig, devices: int | str | Sequence[jax.Device], batch: int = 64,
               prompt_length: int = 512, dtype: str = "bfloat16", max_batch: bool = False, log=None) -> dict:
    """Per-device memory and FLOPs of the `llama_guard` judge's scoring prefill of `batch` prompts padded to
    `prompt_length`, compiled ahead of time for `devices` on the audit's default mesh (`audit_mesh`).

    `architecture`: a `KNOWN_ARCHITECTURES` name (`llama-guard-3-8b`) or a text-only config. `devices`: as
    `plan.plan` takes them (a count, a TPU topology name such as `"v5e:2x4"`, a device list). On TPU devices the
    plan says `fits` (libtpu's verdict) and `peak` is its `peak_memory_in_bytes`. `seconds_per_million_tokens_at_peak`
    is a lower bound: the analytic FLOPs (`prefill_flops_per_token`) at every chip's peak bf16 rate, which no
    program reaches (None for a device kind without a known peak). `max_batch` (TPU only) also searches for the
    largest `--batch-size` that fits, in multiples of the device count; `log(str)` hears of each probe.
    """
    text = judge_config(architecture)
    topology, devices, on_tpu = resolve_devices(devices, max_batch)
    mesh = audit_mesh(batch, devices)
    began = time.perf_counter()
    lowered, weights = lower_prefill(text, mesh, batch, prompt_length, dtype)
    verdict = compile_for(lowered, on_tpu)
    seconds = time.perf_counter() - began
    flops = prefill_flops_per_token(text, prompt_length)
    peak_flops = slice_peak_flops(devices)
    result = {
        "architecture": architecture if isinstance(architecture, str) else None,
        "devices": len(devices), "mesh": dict(mesh.shape), "batch": batch, "prompt_length": prompt_length,
        "dtype": dtype,
        "per_device_bytes": {"weights": weights, "peak": (peak_bytes(verdict.compiled.memory_analysis(), on_tpu)
                                                          if verdict.fits else None)},
        "compile_seconds": round(seconds, 1),
        "custom_calls": custom_calls(verdict.compiled.as_text()) if verdict.fits else [],  # splash: tpu_custom_call
        "model_flops_per_token": flops,
        "peak_bf16_flops_per_second": peak_flops,
        "seconds_per_million_tokens_at_peak": None if peak_flops is None else flops * 1e6 / peak_flops,
    }
    if on_tpu:
        result.update(slice_verdict(topology, devices, verdict))
    if max_batch:
        n = len(devices)
        known = {batch // n: verdict.fits} if batch % n == 0 else None  # the same mesh as the search's probes
        rows, probes = largest_that_fits(lambda r: compile_verdict(lower_prefill(
            text, audit_mesh(r * n, devices), r * n, prompt_length, dtype)[0]), known, log=log)
        result["max_batch"] = rows * n
        result["max_batch_probes"] = {r * n: fits for r, fits in sorted(probes.items())}
    return result


def judge_config(architecture: str | LlavaConfig) -> TextConfig:
    """The decoder of a text-only architecture: the judge loads a plain LLaMA (`load_language_model`)."""
    llava = known_architecture(architecture) if isinstance(architecture, str) else architecture
    if llava.vision is not None:
        name = architecture if isinstance(architecture, str) else "this architecture"
        raise ConfigError(f"{name} is a vision-language model; the llama_guard judge runs a text-only LLaMA (e.g. "
                          f"llama-guard-3-8b, llama-guard-3-1b)")
    return llava.text


def audit_mesh(batch: int, devices: Sequence[jax.Device]) -> Mesh:
    """The audit's mesh without `--mesh` (`evaluate.runner.eval_mesh`): fsdp over as many devices as the batch
    divides over, tensor over the rest."""
    fsdp = math.gcd(batch, len(devices))
    return make_mesh(1, fsdp, len(devices) // fsdp, devices)


def lower_prefill(text: TextConfig, mesh: Mesh, batch: int, prompt_length: int,
                  dtype: str = "bfloat16") -> tuple[jax.stages.Lowered, int]:
    """The judge's scoring prefill on `mesh`, jitted as `Generator.next_token_log_probs` jits it and lowered over
    abstract weights and prompts, and the bytes of weights each device holds. Its arguments are the Generator's:
    (graphdef, state, input_ids, attention_mask, None)."""
    dt = jnp.dtype(dtype)
    model = nnx.eval_shape(lambda: LlamaForCausalLM(text, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda v: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype,
                                                                  sharding=variable_sharding(v, mesh))),
                         state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    rows = NamedSharding(mesh, logical_to_spec(("batch",)))  # as `parallel.place_rows` places the prompts
    ids, mask = (jax.ShapeDtypeStruct((batch, prompt_length), t, sharding=rows) for t in (jnp.int32, jnp.bool_))
    prefill = jax.jit(_next_token_log_probs, out_shardings=NamedSharding(mesh, PartitionSpec()))
    with jax.set_mesh(mesh):
        lowered = prefill.lower(graphdef, state, ids, mask, None)
    return lowered, per_device_bytes(state)


def prefill_flops_per_token(text: TextConfig, prompt_length: int) -> float:
    """Model FLOPs of the prefill per prompt position (padding to the bucket included: it is computed too),
    multiply-adds counted as 2, as a lower bound counts them:
    - each layer's projections (q, k, v, o) and SwiGLU (gate, up, down): 2 per weight;
    - causal attention: QKᵀ and AV over the keys at or before each query, T/2 on average, 2·T·heads·head_dim per
      layer. `plan.train_flops` counts the whole T² square (what masked dense attention computes); a causal
      kernel (splash on TPU) skips most of the masked half, and a lower bound counts none of it;
    - the output head at the last position only (`last_only`): 2·hidden·vocab per prompt, /T per position.
    Norms, RoPE, softmax and the embedding lookup are left out (no matmuls)."""
    q, kv = text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim
    layer = text.hidden_size * (2 * q + 2 * kv) + 3 * text.hidden_size * text.intermediate_size
    attention = 2 * prompt_length * q
    return float(text.num_layers * (2 * layer + attention) + 2 * text.hidden_size * text.vocab_size / prompt_length)


def slice_peak_flops(devices: Sequence[jax.Device]) -> float | None:
    """Chips × their kind's peak bf16 FLOP/s (None for a kind not in `PEAK_BF16_FLOPS`). Chips, not devices:
    libtpu shows a v4 chip's two TensorCores as two devices."""
    per_chip = PEAK_BF16_FLOPS.get(device_kind(devices))
    return None if per_chip is None else per_chip * len({tuple(d.coords) for d in devices})
