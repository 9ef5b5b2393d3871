"""EVA-CLIP ViT as MiniGPT-v2 uses it: CLIP's blocks (`EvaVisionConfig` sets the differences: patch bias, no key
bias, exact GELU, eps 1e-6), no norm before the blocks, and MiniGPT-v2's `ln_vision` on the output.

Parameter names are this project's (those of the CLIP parts it reuses); `checkpoints.minigpt` maps the EVA/LAVIS
`eva_vit_g.pth` names onto them, splitting the fused `qkv` weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.models.clip import ClipEmbeddings, ClipEncoder
from vlguard_jax.models.config import EvaVisionConfig
from vlguard_jax.models.layers import LayerNorm


class EvaVisionTower(nnx.Module):
    def __init__(self, cfg: EvaVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = ClipEmbeddings(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = ClipEncoder(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.ln_vision = LayerNorm(cfg.hidden_size, cfg.ln_vision_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, num_layers: int) -> jax.Array:
        """`[images, 3, H, W]` → `ln_vision` of the hidden state after `num_layers` blocks, `[images, 1 + patches, d]`
        (MiniGPT-v2's `ln_vision(visual_encoder(image))`)."""
        return self.ln_vision(self.encoder(self.embeddings(pixel_values), num_layers))
