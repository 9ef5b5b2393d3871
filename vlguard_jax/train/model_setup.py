"""The model of a run: loaded from a checkpoint or initialised from an architecture dict, plus LoRA adapters.

Rebuilding it from the same config gives the same base weights (same checkpoint, or same seed), which is
what lets LoRA checkpoints hold the adapters alone.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vlguard_jax.checkpoints.hf import load_pretrained
from vlguard_jax.config import ConfigError, ModelConfig, TrainConfig
from vlguard_jax.data.sources import IMAGE_PLACEHOLDER
from vlguard_jax.models.config import LlavaConfig
from vlguard_jax.models.llama import set_attention_chunk
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.lora import LoraConfig, apply_lora


def build_model(config: ModelConfig, train: TrainConfig, tokenizer) -> LlavaForConditionalGeneration:
    dtype = jnp.dtype(config.dtype)
    if config.path is not None:
        model = load_pretrained(config.path, dtype=dtype, vision_tower=config.vision_tower, remat=config.remat)
    elif config.architecture is not None:
        model = LlavaForConditionalGeneration(architecture_config(config.architecture, tokenizer), dtype=dtype,
                                              param_dtype=dtype, remat=config.remat, rngs=nnx.Rngs(train.seed))
    else:
        raise ConfigError("model: give either path (a checkpoint directory) or architecture (random init)")
    if len(tokenizer) > model.config.text.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                          f"{model.config.text.vocab_size}: use the tokenizer that belongs to the checkpoint")
    set_attention_chunk(model, config.attention_chunk)
    if train.mode == "lora":
        lora = train.lora
        apply_lora(model, LoraConfig(lora.rank, lora.alpha, lora.dropout, lora.targets, lora.rslora),
                   nnx.Rngs(train.seed + 1))
    return model


def architecture_config(architecture: dict, tokenizer) -> LlavaConfig:
    """A llava-hf config dict whose vocabulary and special ids come from the tokenizer."""
    text = {**architecture.get("text_config", {}), "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    return LlavaConfig.from_hf({**architecture, "text_config": text, "image_token_index": image_token})
