"""`vlguard-jax plan`: will a training config fit? Compiled ahead of time on N (virtual) devices, nothing allocated.

The train step is lowered with abstract parameters (`nnx.eval_shape`) and the config's mesh, then compiled;
XLA's memory analysis gives per-device argument, output and temporary bytes. On CPU, XLA converts bf16 weights
to f32 inside the step, so temporaries of bf16 runs are pessimistic there; accelerators keep them in bf16.
Model FLOPs are counted analytically (`train_flops`): XLA's own count sees each scanned layer once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from vlguard_jax.config import Config, ConfigError
from vlguard_jax.models.config import KNOWN_ARCHITECTURES, LlavaConfig
from vlguard_jax.models.llama import set_attention_chunk
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.lora import LoraConfig, apply_lora
from vlguard_jax.parallel import logical_to_spec, make_mesh, variable_sharding
from vlguard_jax.train.optimizer import build_optimizer
from vlguard_jax.train.step import init_state, make_train_step, state_shardings
from vlguard_jax.train.trainable import split_model

HBM_GB = (16, 24, 40, 80, 141)


def model_config(config: Config, architecture: str | None) -> LlavaConfig:
    if architecture is not None:
        if architecture not in KNOWN_ARCHITECTURES:
            raise ConfigError(f"unknown architecture {architecture!r}; known: {', '.join(KNOWN_ARCHITECTURES)}")
        return KNOWN_ARCHITECTURES[architecture]
    if config.model.architecture is not None:
        return LlavaConfig.from_hf(config.model.architecture)
    from vlguard_jax.checkpoints.hf import read_config

    config_path, raw = read_config(config.model.path)
    if raw.get("model_type") != "llava":
        raise ConfigError(f"{config_path}: plan reads llava-hf configs; convert the checkpoint first or pass "
                          f"--architecture ({', '.join(KNOWN_ARCHITECTURES)})")
    return LlavaConfig.from_hf(raw)


def abstract_model(llava: LlavaConfig, config: Config) -> LlavaForConditionalGeneration:
    dtype = jnp.dtype(config.model.dtype)

    def make():
        model = LlavaForConditionalGeneration(llava, dtype=dtype, param_dtype=dtype, remat=config.model.remat,
                                              rngs=nnx.Rngs(0))
        set_attention_chunk(model, config.model.attention_chunk)
        if config.train.mode == "lora":
            lora = config.train.lora
            apply_lora(model, LoraConfig(lora.rank, lora.alpha, lora.dropout, lora.targets, lora.rslora), nnx.Rngs(1))
        return model

    return nnx.eval_shape(make)


def _shard_bytes(abstract, sharding) -> int:
    shape = sharding.shard_shape(abstract.shape) if sharding is not None else abstract.shape
    return int(np.prod(shape)) * jnp.dtype(abstract.dtype).itemsize


def plan(config: Config, devices: int, architecture: str | None = None) -> dict:
    llava = model_config(config, architecture)
    t = config.train
    m = config.mesh
    fsdp = m.fsdp if m.fsdp != -1 else devices // (m.data * m.tensor)
    mesh = make_mesh(m.data, fsdp, m.tensor, jax.devices()[:devices])
    model = abstract_model(llava, config)
    graphdef, trainable, frozen = split_model(model, t.mode)
    var = lambda x: isinstance(x, nnx.Variable)
    param_sh = nnx.to_pure_dict(jax.tree.map(lambda v: v.replace(variable_sharding(v, mesh)), trainable, is_leaf=var))
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, jnp.float32, sharding=s),
                          nnx.to_pure_dict(trainable), param_sh)
    frozen_sh = jax.tree.map(lambda v: variable_sharding(v, mesh), frozen, is_leaf=var)
    tx = build_optimizer(t.optimizer, params, total_steps=1000)
    with jax.set_mesh(mesh):
        state_sh = state_shardings(params, tx, t.seed, mesh)
        state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             jax.eval_shape(lambda p: init_state(p, tx, t.seed), params), state_sh)
        batch = _abstract_batch(llava, config, mesh)
        step = jax.jit(make_train_step(graphdef, trainable, tx, t.accum_steps, loss_chunk=t.loss_chunk),
                       in_shardings=(state_sh, frozen_sh, jax.tree.map(lambda a: a.sharding, batch)),
                       out_shardings=(state_sh, None), donate_argnums=0)
        compiled = step.lower(state, frozen, batch).compile()
    memory = compiled.memory_analysis()
    frozen_bytes = sum(_shard_bytes(v, s) for v, s in zip(jax.tree.leaves(frozen), jax.tree.leaves(frozen_sh)))
    param_bytes = sum(_shard_bytes(a, a.sharding) for a in jax.tree.leaves(params))
    opt_bytes = sum(_shard_bytes(a, a.sharding) for a in jax.tree.leaves(state.opt_state))
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)
    tokens = t.global_batch_size * config.data.max_length
    flops = train_flops(llava, t.mode, t.global_batch_size, config.data.max_length, t.lora.rank)
    return {
        "devices": devices, "mesh": dict(mesh.shape), "mode": t.mode, "global_batch": t.global_batch_size,
        "accum_steps": t.accum_steps, "seq_len": config.data.max_length, "loss_chunk": t.loss_chunk,
        "per_device_bytes": {"frozen_params": frozen_bytes, "trainable_params": param_bytes,
                             "optimizer_state": opt_bytes, "temporaries": int(memory.temp_size_in_bytes),
                             "peak": int(peak)},
        "fits_hbm_gb": {str(gb): bool(peak <= gb * 1e9) for gb in HBM_GB},
        "model_flops_per_step": flops, "model_flops_per_token": flops / tokens,
        "xla_flops_per_step_scan_bodies_once": float((compiled.cost_analysis() or {}).get("flops", 0.0)),
    }


def _abstract_batch(llava: LlavaConfig, config: Config, mesh) -> dict:
    rows, length, size = config.train.global_batch_size, config.data.max_length, llava.vision.image_size
    sharding = NamedSharding(mesh, logical_to_spec(("batch",)))
    return {"input_ids": jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding),
            "labels": jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding),
            "attention_mask": jax.ShapeDtypeStruct((rows, length), jnp.bool_, sharding=sharding),
            "pixel_values": jax.ShapeDtypeStruct((rows, 3, size, size), jnp.float32, sharding=sharding)}


def train_flops(llava: LlavaConfig, mode: str, rows: int, seq_len: int, lora_rank: int) -> float:
    """Model FLOPs of one training step (one image per row), counting multiply-adds as 2.

    Decoder matmuls cost 2·params per token forward; backward costs 2× forward when weights train (full) and
    1× when they are frozen (LoRA: activation gradients only, no weight gradients). Attention (QKᵀ, AV) costs
    4·T·(heads·head_dim) per token per layer forward and 2× that backward either way. The frozen vision tower
    runs forward only, over the layers LLaVA reads; the projector always trains.
    """
    text, vision = llava.text, llava.vision
    q, kv = text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim
    layer = text.hidden_size * (2 * q + 2 * kv) + 3 * text.hidden_size * text.intermediate_size
    dense = text.num_layers * layer + text.hidden_size * text.vocab_size
    attention = 4 * seq_len * q * text.num_layers
    backward = 2 if mode == "full" else 1
    tokens = rows * seq_len
    llm = tokens * (2 * dense * (1 + backward) + attention * 3)
    if mode == "lora":  # adapters on q,k,v,o,gate,up,down: forward, activation and weight gradients
        d, f = text.hidden_size, text.intermediate_size
        adapter = lora_rank * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))
        llm += tokens * 2 * adapter * text.num_layers * 3
    patches = vision.num_patches
    v_layer = 4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size
    v_tokens = patches + 1
    tower = (2 * patches * (vision.patch_size ** 2 * vision.num_channels * vision.hidden_size)
             + llava.feature_layer_index * (2 * v_tokens * v_layer + 4 * v_tokens * v_tokens * vision.hidden_size))
    projector = 2 * llava.num_image_tokens * (vision.hidden_size * text.hidden_size
                                              + (llava.projector_depth - 1) * text.hidden_size ** 2) * 3
    return float(llm + rows * (tower + projector))
