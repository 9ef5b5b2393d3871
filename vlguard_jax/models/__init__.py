"""Flax NNX models: CLIP vision tower, LLaMA-family decoder, and the LLaVA glue."""

from vlguard_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from vlguard_jax.models.llama import KVCache, LlamaForCausalLM
from vlguard_jax.models.llava import LlavaForConditionalGeneration

__all__ = ["KVCache", "LlamaForCausalLM", "LlavaConfig", "LlavaForConditionalGeneration", "TextConfig",
           "VisionConfig"]
