"""vlguard-jax: LLaVA-style vision-language models in JAX/Flax for VLGuard safety fine-tuning and evaluation."""

from vlguard_jax.checkpoints.hf import load_language_model, load_pretrained, save_pretrained
from vlguard_jax.checkpoints.tensors import CheckpointError
from vlguard_jax.models import LlavaConfig, LlavaForConditionalGeneration, TextConfig, VisionConfig

__all__ = ["CheckpointError", "LlavaConfig", "LlavaForConditionalGeneration", "TextConfig", "VisionConfig",
           "load_language_model", "load_pretrained", "save_pretrained"]
__version__ = "0.1.0"
