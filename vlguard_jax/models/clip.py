"""CLIP ViT vision tower (the `vision_tower.vision_model` of llava-hf checkpoints); its parts also build EVA's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.models.config import VisionConfig
from vlguard_jax.models.attention import Attends, self_attention
from vlguard_jax.models.layers import Embedding, LayerNorm, Linear, activation, param, scan_layers, stacked
from vlguard_jax.parallel import constrain


class ClipEmbeddings(nnx.Module):
    """Patch convolution (with a bias where the config's tower has one) + class token + learned positions."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.patch_size = cfg.patch_size
        self.dtype = dtype
        d = cfg.hidden_size
        self.class_embedding = param(rngs, nnx.initializers.normal(0.02), (d,), param_dtype, ("embed",))
        self.patch_embedding = ClipPatchConv(cfg, param_dtype=param_dtype, rngs=rngs)
        self.position_embedding = Embedding(cfg.num_patches + 1, d, (None, "embed"), dtype=dtype,
                                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixel_values.astype(self.dtype))  # [n, h, w, d]
        n, h, w, d = patches.shape
        patches = patches.reshape(n, h * w, d)  # row-major, as torch's flatten(2).transpose(1, 2)
        cls = constrain(self.class_embedding[...], (None,))  # whole, like `Embedding`'s table: rows stay batch-split
        cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, d))
        x = jnp.concatenate([cls, patches], axis=1)
        return x + self.position_embedding(jnp.arange(h * w + 1))[None]


class ClipPatchConv(nnx.Module):
    """Non-overlapping patch convolution over NCHW pixels; kernel `[kh, kw, in, out]`."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.kernel = param(rngs, nnx.initializers.lecun_normal(), (p, p, cfg.num_channels, cfg.hidden_size),
                            param_dtype, (None, None, None, "embed"))
        self.bias = param(rngs, nnx.initializers.zeros, (cfg.hidden_size,), param_dtype, (None,)) \
            if cfg.patch_bias else None

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        x = jnp.transpose(pixel_values, (0, 2, 3, 1))  # NCHW (the processor's layout) → NHWC
        # Whole, like `Embedding`'s table: the patches then come out split by image as the pixels are, where an
        # fsdp-split kernel gave them split by feature and the move to batch-split rows replicated them whole.
        kernel = constrain(self.kernel[...], (None,) * 4).astype(x.dtype)
        stride = kernel.shape[:2]
        out = jax.lax.conv_general_dilated(x, kernel, stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out if self.bias is None else out + self.bias[...].astype(out.dtype)


class ClipAttention(nnx.Module, Attends):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d, d, ("embed", "heads"), use_bias=True, **kw)
        self.k_proj = Linear(d, d, ("embed", "heads"), use_bias=cfg.key_bias, **kw)
        self.v_proj = Linear(d, d, ("embed", "heads"), use_bias=True, **kw)
        self.out_proj = Linear(d, d, ("heads", "embed"), use_bias=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
        out = self_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                             implementation=self.attention, causal=False)
        return self.out_proj(out.reshape(b, t, d))


class ClipMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nnx.Module):
    """Pre-norm block: `x += attn(ln1(x))`, `x += mlp(ln2(x))`."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = ClipAttention(cfg, **kw)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.mlp = ClipMLP(cfg, **kw)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = constrain(x, ("batch", "length", "act_embed"))  # else images may be replicated onto every device
        x = x + self.self_attn(self.layer_norm1(x))
        return constrain(x + self.mlp(self.layer_norm2(x)), ("batch", "length", "act_embed"))


class ClipEncoder(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, remat: str, rngs: nnx.Rngs):
        self.remat = remat
        self.layers = stacked(lambda r: ClipEncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                              cfg.num_layers, rngs)

    def __call__(self, x: jax.Array, num_layers: int) -> jax.Array:
        """The hidden state after the first `num_layers` layers (HF `hidden_states[num_layers]`)."""
        if num_layers == 0:
            return x
        x, _ = scan_layers(self.layers, lambda layer, h, _: (layer(h), None), x, remat=self.remat,
                           num_layers=num_layers)
        return x


class ClipVisionTransformer(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, remat: str, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = ClipEmbeddings(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pre_layrnorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.encoder = ClipEncoder(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        # Never used by LLaVA (it reads an inner hidden state); kept so checkpoints round-trip complete.
        self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, num_layers: int) -> jax.Array:
        """`[images, 3, H, W]` → the hidden state after `num_layers` encoder layers, `[images, 1 + patches, d]`."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        return self.encoder(x, num_layers)


class ClipVisionTower(nnx.Module):
    """Mirrors HF's `CLIPVisionModel` nesting so parameter paths equal checkpoint names."""

    def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.vision_model = ClipVisionTransformer(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, num_layers: int) -> jax.Array:
        return self.vision_model(pixel_values, num_layers)
