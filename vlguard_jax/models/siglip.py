"""SigLIP ViT vision tower (the `vision_tower.vision_model` of llava-hf's LLaVA-OneVision checkpoints).

CLIP's pre-norm blocks (`SiglipVisionConfig` sets the differences: a patch-convolution bias, tanh-approximated
GELU, eps 1e-6) without CLIP's class token and pre-block norm. Attribute names mirror HF's `SiglipVisionModel`, so
parameter paths equal checkpoint names. The pooling head is absent: OneVision reads an encoder hidden state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.models.clip import ClipEncoder, ClipPatchConv
from vlguard_jax.models.config import SiglipVisionConfig
from vlguard_jax.models.layers import Embedding, LayerNorm


class SiglipEmbeddings(nnx.Module):
    """Patch convolution + one learned position per patch (no class token)."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.patch_embedding = ClipPatchConv(cfg, param_dtype=param_dtype, rngs=rngs)
        self.position_embedding = Embedding(cfg.num_patches, cfg.hidden_size, (None, "embed"), dtype=dtype,
                                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixel_values.astype(self.dtype))  # [n, h, w, d]
        n, h, w, d = patches.shape
        patches = patches.reshape(n, h * w, d)  # row-major, as torch's flatten(2).transpose(1, 2)
        return patches + self.position_embedding(jnp.arange(h * w))[None]


class SiglipVisionTransformer(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, dtype, param_dtype, remat: str, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = SiglipEmbeddings(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = ClipEncoder(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        # Never used by LLaVA-OneVision (it reads an inner hidden state); kept so checkpoints round-trip complete.
        self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, num_layers: int) -> jax.Array:
        """`[images, 3, H, W]` → the hidden state after `num_layers` encoder layers, `[images, patches, d]`."""
        return self.encoder(self.embeddings(pixel_values), num_layers)


class SiglipVisionTower(nnx.Module):
    """Mirrors HF's `SiglipVisionModel` nesting so parameter paths equal checkpoint names."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.vision_model = SiglipVisionTransformer(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat,
                                                    rngs=rngs)

    def __call__(self, pixel_values: jax.Array, num_layers: int) -> jax.Array:
        return self.vision_model(pixel_values, num_layers)
