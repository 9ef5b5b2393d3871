"""`vlguard-jax plan`: will a training config fit? Compiled ahead of time, nothing allocated.

The run's own train step (`vlguard_jax.train.setup`: the model, shardings and optimizer state `train` builds) is
lowered with abstract parameters and the config's mesh, then compiled for N local devices (virtual CPUs here)
or for a named TPU slice (`"v5e:2x4"`: libtpu compiles for it on any machine, see `vlguard_jax.topology`).
XLA's memory analysis gives per-device argument, output, temporary and (on TPU) peak bytes; on TPU, libtpu's
HBM check also gives the verdict, and the largest per-device batch that fits can be searched, one compile per
probe. The partitioner's involuntary full rematerializations (`reshard_check`) are listed: each is a tensor
replicated whole every step. On CPU, XLA converts bf16 weights to f32 inside the step, so temporaries of bf16
runs are pessimistic there; TPUs keep them in bf16.
Model FLOPs are counted analytically (`train_flops`): XLA's own count sees each scanned layer once.
The batch is the pipeline's, as shapes: `[rows, len]` tokens and each row's image slot in `data.vision_inputs`'
fixed arrays; an any-resolution model (LLaVA-NeXT, OneVision) is planned at its worst case, every row holding its
largest image: `max_crops` crops through the tower, `max_image_tokens` packed, and `data.max_length` tokens.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from vlguard_jax.config import Config, ConfigError
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models import anyres
from vlguard_jax.models.config import KNOWN_ARCHITECTURES, LlavaConfig
from vlguard_jax.models.lora import DEFAULT_TARGETS
from vlguard_jax.parallel import logical_to_spec
from vlguard_jax.reshard_check import captured_reshards
from vlguard_jax.topology import Verdict, compile_verdict, device_kind, slice_devices
from vlguard_jax.train import setup

HBM_GB = (16, 24, 40, 80, 141)


def model_config(config: Config, architecture: str | None) -> LlavaConfig:
    """A known architecture by name, else the run's own (`vlguard_jax.train.setup.model_config`)."""
    return setup.model_config(config) if architecture is None else known_architecture(architecture)


def known_architecture(name: str) -> LlavaConfig:
    if name not in KNOWN_ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(KNOWN_ARCHITECTURES)}")
    return KNOWN_ARCHITECTURES[name]


def resolve_devices(devices: int | str | Sequence[jax.Device], max_batch: bool = False
                    ) -> tuple[str | None, list[jax.Device], bool]:
    """(the topology name or None, the devices, whether they are TPUs) of a count (the first N local devices), a TPU
    topology name (`"v5e:2x4"`, needs libtpu) or a device list; a search for the largest batch (`max_batch`) is
    refused off TPU."""
    if isinstance(devices, str):
        topology, devices = devices, slice_devices(devices)
    else:
        topology, devices = None, list(jax.devices()[:devices] if isinstance(devices, int) else devices)
    on_tpu = devices[0].platform == "tpu"
    if max_batch and not on_tpu:
        raise ConfigError("the largest batch is searched on TPU devices only (plan for a topology): only libtpu's "
                          "compile says what does not fit")
    return topology, devices, on_tpu


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of abstract arrays with shardings (whole arrays where there is none)."""
    def shard(abstract) -> int:
        sharding = abstract.sharding
        shape = sharding.shard_shape(abstract.shape) if sharding is not None else abstract.shape
        return int(np.prod(shape)) * jnp.dtype(abstract.dtype).itemsize
    return sum(shard(a) for a in jax.tree.leaves(tree))


def compile_for(lowered: jax.stages.Lowered, on_tpu: bool) -> Verdict:
    """libtpu's compile with its HBM verdict on TPU devices; elsewhere a plain compile (no memory check)."""
    return compile_verdict(lowered) if on_tpu else Verdict(True, compiled=lowered.compile())


def peak_bytes(memory, on_tpu: bool) -> int:
    """Per-device peak of a compiled program: libtpu's own figure on TPU, else arguments + outputs − aliased +
    temporaries."""
    if on_tpu:
        return int(memory.peak_memory_in_bytes)
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
               + memory.temp_size_in_bytes)


def slice_verdict(topology: str | None, devices: Sequence[jax.Device], verdict: Verdict) -> dict:
    """A TPU plan's verdict fields: the slice, its device kind, `fits`, and when it does not, the compiler's
    message and (when it states them) its bytes needed and available."""
    result = {"topology": topology, "device_kind": device_kind(devices), "fits": verdict.fits}
    if not verdict.fits:
        result["compiler_message"] = verdict.message
        if verdict.hbm() is not None:  # the compiler's figures, as its message words them
            result["hbm_bytes_needed"], result["hbm_bytes_available"] = verdict.hbm()
    return result


def plan(config: Config, devices: int | str | Sequence[jax.Device], architecture: str | None = None,
         max_batch: bool = False, log=None) -> dict:
    """Per-device memory and FLOPs of `config`'s train step, compiled ahead of time for `devices`.

    `devices`: a count (the first N local devices: virtual CPUs here), a TPU topology name (`"v5e:2x4"`, needs
    libtpu) or a device list. On TPU devices the compile is libtpu's own, with its HBM check: the plan says
    `fits` (the compiler's verdict) and `peak` is `memory_analysis().peak_memory_in_bytes`; on other devices
    `peak` is arguments + outputs − aliased + temporaries. `max_batch` (TPU only) also searches for the largest
    per-device batch that fits (`max_per_device_batch`); `log(str)` hears of each probe.
    """
    topology, devices, on_tpu = resolve_devices(devices, max_batch)
    llava = model_config(config, architecture)
    t = config.train
    mesh = setup.mesh_for(config, devices)
    rows = per_device_batch(config, mesh)
    lowered, sizes = _lower_step(config, llava, mesh)
    with captured_reshards() as reshards:
        verdict = compile_for(lowered, on_tpu)
    per_device = {**sizes, "temporaries": None, "peak": None}
    xla_flops, kernels = 0.0, []
    if verdict.fits:
        memory = verdict.compiled.memory_analysis()
        per_device["temporaries"] = int(memory.temp_size_in_bytes)
        per_device["peak"] = peak_bytes(memory, on_tpu)
        xla_flops = float((verdict.compiled.cost_analysis() or {}).get("flops", 0.0))
        kernels = custom_calls(verdict.compiled.as_text())
    peak = per_device["peak"]
    sequences = t.global_batch_size * (1 if t.objective == "sft" else 2)  # a preference pair: two answers
    tokens = sequences * config.data.max_length
    encodes = 2 if t.objective != "sft" and t.preference.reference == "model" else 1  # the reference's pass too
    flops = train_flops(llava, t.mode, t.global_batch_size, config.data.max_length, t.lora.rank, t.lora.targets,
                        t.objective, t.preference.reference)
    parts = setup.attention_choices(config, llava, devices[0].platform)
    result = {
        "devices": len(devices), "mesh": dict(mesh.shape), "mode": t.mode, "objective": t.objective,
        "global_batch": t.global_batch_size,
        "attention": parts["decoder"]["implementation"], "attention_parts": parts,
        "accum_steps": t.accum_steps, "per_device_batch": rows,
        "seq_len": config.data.max_length, "loss_chunk": t.loss_chunk,
        "tokens_per_step": tokens, "image_crops_per_step": t.global_batch_size * crop_slots(llava) * encodes,
        "max_image_tokens": max_image_tokens(llava),
        "per_device_bytes": per_device,
        "fits_hbm_gb": {str(gb): bool(peak <= gb * 1e9) for gb in HBM_GB} if peak is not None else {},
        "model_flops_per_step": flops, "model_flops_per_token": flops / tokens,
        "xla_flops_per_step_scan_bodies_once": xla_flops,
        "involuntary_rematerializations": reshards,
        "custom_calls": kernels,
    }
    if on_tpu:
        result.update(slice_verdict(topology, devices, verdict))
    if max_batch:
        result["max_per_device_batch"], result["max_batch_probes"] = max_per_device_batch(
            config, llava, mesh, known={rows: verdict.fits}, log=log)
    return result


def crop_slots(llava: LlavaConfig) -> int:
    """Crops the tower encodes for one image slot of a batch: an any-resolution batch pads every image to the model's
    most crops (`data.vision_inputs`) and the tower runs on every slot, zeros included; 1 for a fixed-resolution
    model; 0 for a text-only one."""
    if llava.vision is None:
        return 0
    return anyres.max_crops(llava) if llava.anyres else 1


def max_image_tokens(llava: LlavaConfig) -> int:
    """Image tokens of the largest image: what a row's sequence must hold beside its text (0 text-only)."""
    return 0 if llava.vision is None else VisionInputs.of(llava).max_tokens


def custom_calls(hlo: str) -> list[str]:
    """The custom-call targets of a compiled program: the compiler's evidence of the kernels it runs
    (`tpu_custom_call` for a Pallas/Mosaic kernel such as splash, `__cudnn$fmha…` for cuDNN's attention)."""
    return sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))


def per_device_batch(config: Config, mesh) -> int:
    """Rows per device per micro-batch: global batch / accumulation steps / (data × fsdp)."""
    t, shards = config.train, mesh.shape["data"] * mesh.shape["fsdp"]
    if t.global_batch_size % (t.accum_steps * shards):
        raise ConfigError(f"train.global_batch_size {t.global_batch_size} is not a multiple of accum_steps "
                          f"{t.accum_steps} × data·fsdp {shards}")
    return t.global_batch_size // (t.accum_steps * shards)


def with_per_device_batch(config: Config, rows: int, mesh) -> Config:
    """`config` with `rows` per device per micro-batch (accumulation steps and the mesh unchanged)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    train = dataclasses.replace(config.train, global_batch_size=rows * config.train.accum_steps * shards)
    return dataclasses.replace(config, train=train)


def max_per_device_batch(config: Config, llava: LlavaConfig, mesh, known: dict[int, bool] | None = None,
                         limit: int = 4096, log=None) -> tuple[int, dict[int, bool]]:
    """The largest per-device batch whose train step libtpu compiles within HBM (0: not even one row), at the
    config's sequence length (`largest_that_fits`); returns the answer and every probe's verdict."""
    def verdict(rows: int) -> Verdict:
        return compile_verdict(_lower_step(with_per_device_batch(config, rows, mesh), llava, mesh)[0])
    return largest_that_fits(verdict, known, limit, log)


def largest_that_fits(verdict_at: Callable[[int], Verdict], known: dict[int, bool] | None = None,
                      limit: int = 4096, log=None) -> tuple[int, dict[int, bool]]:
    """The largest rows per device (≤ `limit`; 0: not even one) whose program `verdict_at(rows)` says fits:
    doubling (or halving) from a known probe to bracket it, then bisection. Each probe is one compile; returns
    the answer and every probe's verdict; `log(str)` hears of each probe."""
    probes = dict(known or {})

    def fits(rows: int) -> bool:
        if rows not in probes:
            began = time.perf_counter()
            verdict = verdict_at(rows)
            probes[rows] = verdict.fits
            if log is not None:
                hbm = verdict.hbm()
                needs = (f" ({hbm[0] / 2**30:.2f} GiB needed, {hbm[1] / 2**30:.2f} available)" if hbm else
                         "" if verdict.fits else f" ({verdict.message.splitlines()[0][:300]})")
                log(f"{rows} rows per device: {'fits' if verdict.fits else 'does not fit'}{needs}; "
                    f"{time.perf_counter() - began:.0f} s")
        return probes[rows]

    start = min(probes) if probes else 1
    if fits(start):
        low, high = start, 2 * start
        while high <= limit and fits(high):
            low, high = high, 2 * high
        if high > limit:
            return low, probes
    else:
        high, low = start, start // 2
        while low > 0 and not fits(low):
            high, low = low, low // 2
        if low == 0:
            return 0, probes
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, probes


def _lower_step(config: Config, llava: LlavaConfig, mesh) -> tuple[jax.stages.Lowered, dict]:
    """The config's train step on `mesh`, lowered with abstract state and batch (nothing allocated), and the
    per-device bytes of what it holds: `{"frozen_params", "trainable_params", "optimizer_state",
    "reference_params", "batch"}` (a preference run's reference, 0 otherwise; the step's input batch: an
    any-resolution one's crops are most of it).

    The one place that builds the model, shardings, optimizer state and step: the caller compiles (and so
    sees libtpu's out-of-memory verdict with the sizes still in hand)."""
    t = config.train
    run = setup.build(config, mesh, values="abstract", llava=llava)  # the run's own setup: a plan is the run
    state = run.abstract_state()
    with jax.set_mesh(mesh):
        batch = _abstract_batch(llava, config, mesh)
        lowered = run.train_step(t.accum_steps, t.loss_chunk).lower(state, run.step_weights, batch)
    sizes = {"frozen_params": per_device_bytes(run.frozen), "trainable_params": per_device_bytes(state.params),
             "optimizer_state": per_device_bytes(state.opt_state),
             "reference_params": per_device_bytes(run.step_weights[1] if run.preference else ()),
             "batch": per_device_bytes(batch)}
    return lowered, sizes


def _abstract_batch(llava: LlavaConfig, config: Config, mesh) -> dict:
    """The pipeline's batch as shapes: `[rows, len]` tokens, `[rows, 2, len]` for preference pairs, and one image
    slot per row in `data.vision_inputs`' arrays (any-resolution: crops `[rows, max_crops, 3, S, S]` and packing plans
    `[rows, max_tokens, taps]`, which the step hands the model as `models.tiles.images_of(batch)`)."""
    rows, length = config.train.global_batch_size, config.data.max_length
    tokens = (rows, length) if config.train.objective == "sft" else (rows, 2, length)
    sharding = NamedSharding(mesh, logical_to_spec(("batch",)))
    batch = {"input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32, sharding=sharding),
             "labels": jax.ShapeDtypeStruct(tokens, jnp.int32, sharding=sharding),
             "attention_mask": jax.ShapeDtypeStruct(tokens, jnp.bool_, sharding=sharding)}
    if llava.vision is not None:  # zero rows: the arrays' trailing shapes and dtypes, nothing allocated
        for name, empty in VisionInputs.of(llava).batch(0).items():
            batch[name] = jax.ShapeDtypeStruct((rows, *empty.shape[1:]), empty.dtype, sharding=sharding)
    if config.train.objective != "sft" and config.train.preference.reference == "precomputed":
        batch["reference_logps"] = jax.ShapeDtypeStruct((rows, 2), jnp.float32, sharding=sharding)
    return batch


def train_flops(llava: LlavaConfig, mode: str, rows: int, seq_len: int, lora_rank: int,
                lora_targets: str = DEFAULT_TARGETS, objective: str = "sft", reference: str = "model") -> float:
    """Model FLOPs of one training step (one image slot per row), counting multiply-adds as 2.

    Decoder matmuls cost 2·params per token forward; backward costs 2× forward when weights train (full) and
    1× when they are frozen (LoRA: activation gradients only, no weight gradients). Attention (QKᵀ, AV) costs
    4·T·(heads·head_dim) per token per layer forward and 2× that backward either way. The frozen vision tower
    runs forward only, over the layers LLaVA reads and every crop slot of the row (`crop_slots`: an any-resolution
    row's `max_crops`, zeros included, as the step runs them); the projector always trains, and with it the
    any-resolution packing (`models.tiles.pack_features`: a weighted sum of `taps` gathered features for each of the
    `max_image_tokens` slots) its gradient flows back through. LoRA adapters count on the
    decoder projections `lora_targets` matches. A preference objective's row is a pair: two sequences through the
    policy (forward and backward) and again through the reference (forward only, no adapters; none when
    `reference` is `precomputed`), and its image through the tower and projector once for each.
    """
    text, vision = llava.text, llava.vision
    q, kv = text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim
    layer = text.hidden_size * (2 * q + 2 * kv) + 3 * text.hidden_size * text.intermediate_size
    dense = text.num_layers * layer + text.hidden_size * text.vocab_size
    attention = 4 * seq_len * q * text.num_layers
    backward = 2 if mode == "full" else 1
    preference = objective != "sft"
    reference_forward = preference and reference == "model"
    tokens = rows * seq_len * (2 if preference else 1)
    llm = tokens * (2 * dense * (1 + backward) + attention * 3)
    if reference_forward:
        llm += tokens * (2 * dense + attention)
    if mode == "lora":  # each adapter: forward, activation and weight gradients
        d, f = text.hidden_size, text.intermediate_size
        widths = {"self_attn.q_proj": d + q, "self_attn.k_proj": d + kv, "self_attn.v_proj": d + kv,
                  "self_attn.o_proj": q + d, "mlp.gate_proj": d + f, "mlp.up_proj": d + f, "mlp.down_proj": f + d}
        adapted = [w for name, w in widths.items() if re.fullmatch(lora_targets, f"language_model.model.layers.{name}")]
        llm += tokens * 2 * lora_rank * sum(adapted) * text.num_layers * 3
    if vision is None:  # a text-only model
        return float(llm)
    patches, crops = vision.num_patches, crop_slots(llava)
    v_layer = 4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size
    v_tokens = patches + vision.class_token
    tower = crops * (2 * patches * (vision.patch_size ** 2 * vision.num_channels * vision.hidden_size)
                     + llava.feature_layer_index * (2 * v_tokens * v_layer + 4 * v_tokens ** 2 * vision.hidden_size))
    projector = 2 * crops * llava.tokens_per_crop * (vision.hidden_size * llava.projector_group * text.hidden_size
                                                     + (llava.projector_depth - 1) * text.hidden_size ** 2)
    if llava.anyres:
        projector += 2 * anyres.taps(llava) * max_image_tokens(llava) * text.hidden_size
    image = tower + 3 * projector  # the policy's: projector (and packing) forward and backward
    if reference_forward:
        image += tower + projector  # the reference's, forward only
    return float(llm + rows * image)
