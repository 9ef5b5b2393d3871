"""The PyTorch MiniGPT-v2 the benchmark times ours against: its own model code (Vision-CAIR/MiniGPT-4 `eva_vit.py`,
`minigpt_v2.py` `encode_img`, `minigpt_base.py`), on transformers' `LlamaForCausalLM`, which PEFT adapts as it
does there. transformers has no MiniGPT-v2, so this is the stack its users run: EVA blocks with explicit softmax
attention, `ln_vision`, every four adjacent visual tokens concatenated and `llama_proj`, the LLM fed
`inputs_embeds` (images spliced over the image-token positions of `input_ids`, as `get_context_emb` places them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from vlguard_jax.models.config import LlavaConfig


class _Attention(nn.Module):
    """EVA's: one fused `qkv` matmul, a q and a v bias but no k bias, softmax(q·kᵀ / √d)·v."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attention = ((q * (width // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
        self.attn = _Attention(width, heads)
        self.mlp = _Mlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch, stride=patch)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
    """`VisionTransformer` as `create_eva_vit_g` configures it; its `state_dict()` is `eva_vit_g.pth`'s layout."""

    def __init__(self, llava: LlavaConfig):
        super().__init__()
        v = llava.vision
        self.patch_embed = _PatchEmbed(v.num_channels, v.hidden_size, v.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, v.hidden_size) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, v.num_patches + 1, v.hidden_size) * 0.02)
        self.blocks = nn.ModuleList(_Block(v.hidden_size, v.num_heads, v.intermediate_size, v.layer_norm_eps)
                                    for _ in range(v.num_layers))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class TorchMiniGPTv2(nn.Module):
    """`forward(input_ids, attention_mask, pixel_values, labels)` and `generate(...)` with the argument names of
    transformers' LLaVA, so the benchmark drives both stacks alike; `gradient_checkpointing_enable` is the LLM's
    (MiniGPT-v2's `use_grad_checkpoint_llm`; the frozen tower keeps no activations to checkpoint)."""

    def __init__(self, llava: LlavaConfig):
        super().__init__()
        self.image_token_id = llava.image_token_id
        self.visual_encoder = EvaViT(llava)
        self.ln_vision = nn.LayerNorm(llava.vision.hidden_size, eps=llava.vision.ln_vision_eps)
        self.group = llava.projector_group
        self.llama_proj = nn.Linear(llava.vision.hidden_size * self.group, llava.text.hidden_size)
        text = llava.text.to_hf()
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": llava.text.rope_theta}
        self.llm = LlamaForCausalLM(LlamaConfig(**text))

    def gradient_checkpointing_enable(self) -> None:
        self.llm.gradient_checkpointing_enable()

    def encode_img(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.visual_encoder(pixels)
        ln = self.ln_vision  # in fp32 whatever the weights' dtype, as MiniGPT-v2's LayerNorm subclass computes it
        normed = F.layer_norm(hidden.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)
        features = normed.to(hidden.dtype)[:, 1:]
        images, tokens, width = features.shape
        return self.llama_proj(features.reshape(images, tokens // self.group, width * self.group))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        features = self.encode_img(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(is_image[..., None], features.reshape(-1, features.shape[-1]))

    def forward(self, input_ids, attention_mask, pixel_values, labels=None):
        return self.llm(inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask,
                        labels=labels)

    def generate(self, input_ids, pixel_values, attention_mask, **kwargs) -> torch.Tensor:
        """The prompt's ids and the new ones, as transformers' LLaVA returns them: `input_ids` ride along with the
        `inputs_embeds` that feed the first step."""
        return self.llm.generate(input_ids=input_ids, inputs_embeds=self.embed(input_ids, pixel_values),
                                 attention_mask=attention_mask, **kwargs)

