"""Independent PyTorch reference of MiniGPT-v2, with tiny random parts written in their released formats.

Re-implements, in fp32, Vision-CAIR/MiniGPT-4:
  minigpt4/models/eva_vit.py      VisionTransformer, interpolate_pos_embed, create_eva_vit_g
  minigpt4/models/base_model.py   init_vision_encoder (ln_vision), init_llm (LLaMA + PEFT LoRA)
  minigpt4/models/minigpt_base.py get_context_emb, embed_tokens
  minigpt4/models/minigpt_v2.py   llama_proj, encode_img, from_config's load_state_dict(ckpt["model"], strict=False)
and the three parts the model is built from: LAVIS's eva_vit_g.pth (a plain state dict), a HF LLaMA directory,
and the runner's checkpoint (only trainable parameters: llama_proj and the LoRA A/B, PEFT 0.2 key names).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

EVA_TINY = dict(patch_size=4, embed_dim=32, num_heads=4, mlp_ratio=4.3637)
PRETRAIN_IMG = 16
IMG = 32
EVA_DEPTH = 3  # blocks in the checkpoint (EVA-g: 40)
USED_DEPTH = 2  # create_eva_vit_g builds one fewer (depth=39); strict=False drops the last block's weights
HIDDEN = 64


class _PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, embed_dim):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        assert x.shape[-2:] == (self.img_size, self.img_size), x.shape
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    """EVA attention: qkv without bias, learned q and v biases, k bias fixed at zero."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm block without layer scale (create_eva_vit_g leaves init_values None)."""

    def __init__(self, dim, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaReference(nn.Module):
    """eva_vit.VisionTransformer as create_eva_vit_g configures it: all tokens after the last block, no final norm."""

    def __init__(self, img_size, depth, patch_size, embed_dim, num_heads, mlp_ratio):
        super().__init__()
        self.num_features = embed_dim
        self.patch_embed = _PatchEmbed(img_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x


def interpolate_pos_embed(model, checkpoint_model):
    if 'pos_embed' in checkpoint_model:
        pos_embed_checkpoint = checkpoint_model['pos_embed'].float()
        embedding_size = pos_embed_checkpoint.shape[-1]
        num_patches = model.patch_embed.num_patches
        num_extra_tokens = model.pos_embed.shape[-2] - num_patches
        # height (== width) for the checkpoint position embedding
        orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
        # height (== width) for the new position embedding
        new_size = int(num_patches ** 0.5)
        # class_token and dist_token are kept unchanged
        if orig_size != new_size:
            print("Position interpolate from %dx%d to %dx%d" % (orig_size, orig_size, new_size, new_size))
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            # only the position tokens are interpolated
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
            pos_tokens = torch.nn.functional.interpolate(
                pos_tokens, size=(new_size, new_size), mode='bicubic', align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
            new_pos_embed = torch.cat((extra_tokens, pos_tokens), dim=1)
            checkpoint_model['pos_embed'] = new_pos_embed


def random_eva_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """EVA checkpoint at PRETRAIN_IMG, scaled so activations stay O(1) and every bias and norm matters."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    d, p = EVA_TINY["embed_dim"], EVA_TINY["patch_size"]
    h = int(d * EVA_TINY["mlp_ratio"])
    n = (PRETRAIN_IMG // p) ** 2
    sd = {
        "cls_token": rand(1, 1, d, std=0.5),
        "pos_embed": rand(1, n + 1, d, std=0.5),
        "patch_embed.proj.weight": rand(d, 3, p, p, std=(3 * p * p) ** -0.5),
        "patch_embed.proj.bias": rand(d, std=0.1),
    }
    for i in range(EVA_DEPTH):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": rand(d, std=0.1, mean=1.0),
            b + "norm1.bias": rand(d, std=0.1),
            b + "attn.q_bias": rand(d, std=0.2),
            b + "attn.v_bias": rand(d, std=0.2),
            b + "attn.qkv.weight": rand(3 * d, d, std=d**-0.5),
            b + "attn.proj.weight": rand(d, d, std=d**-0.5),
            b + "attn.proj.bias": rand(d, std=0.1),
            b + "norm2.weight": rand(d, std=0.1, mean=1.0),
            b + "norm2.bias": rand(d, std=0.1),
            b + "mlp.fc1.weight": rand(h, d, std=d**-0.5),
            b + "mlp.fc1.bias": rand(h, std=0.1),
            b + "mlp.fc2.weight": rand(d, h, std=h**-0.5),
            b + "mlp.fc2.bias": rand(d, std=0.1),
        }
    return sd


def _load_eva(state_dict, img_size, depth) -> EvaReference:
    """create_eva_vit_g's loading: interpolate pos_embed on a copy, then load with strict=False."""
    model = EvaReference(img_size, depth, **EVA_TINY)
    sd = copy.deepcopy(dict(state_dict))
    interpolate_pos_embed(model, sd)
    msg = model.load_state_dict(sd, strict=False)
    assert not msg.missing_keys, msg.missing_keys
    dropped = {k for k in state_dict if k.startswith("blocks.") and int(k.split(".")[1]) >= depth}
    assert set(msg.unexpected_keys) == dropped, msg.unexpected_keys
    return model.float().eval()


def eva_reference_features(state_dict, pixel_values: np.ndarray, img_size=IMG, depth=USED_DEPTH) -> np.ndarray:
    model = _load_eva(state_dict, img_size, depth)
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(pixel_values, np.float32))).numpy()


def _lora_config(rank, alpha) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")


def write_minigptv2_parts(root: Path, seed=0, lora_rank=8, lora_alpha=16.0, vocab_size=32000) -> dict:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    eva = root / "eva_vit_g.pth"
    torch.save(random_eva_state_dict(seed), eva)

    g = torch.Generator().manual_seed(seed + 1)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    llama = LlamaForCausalLM(config)
    with torch.no_grad():  # norms 1 + noise; unit embeddings; fan-in-scaled matrices, so logits are O(1)
        for name, p in llama.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
    llama_dir = root / "llama"
    llama.save_pretrained(llama_dir, safe_serialization=True)

    g = torch.Generator().manual_seed(seed + 2)
    d_img = 4 * EVA_TINY["embed_dim"]
    sd = {"llama_proj.weight": torch.randn(HIDDEN, d_img, generator=g) * d_img**-0.5,
          "llama_proj.bias": 0.1 * torch.randn(HIDDEN, generator=g)}
    for i in range(config.num_hidden_layers):
        for proj in ("q_proj", "v_proj"):
            k = f"llama_model.base_model.model.model.layers.{i}.self_attn.{proj}."
            sd[k + "lora_A.weight"] = torch.randn(lora_rank, HIDDEN, generator=g) * HIDDEN**-0.5
            sd[k + "lora_B.weight"] = torch.randn(HIDDEN, lora_rank, generator=g) * 0.5 * lora_rank**-0.5
    ckpt = root / "minigptv2_checkpoint.pth"
    torch.save({"model": sd}, ckpt)
    return dict(eva=eva, llama=llama_dir, ckpt=ckpt, lora_rank=lora_rank, lora_alpha=lora_alpha, hidden=HIDDEN,
                vocab_size=vocab_size)


class MiniGPTv2Reference(nn.Module):
    """MiniGPTv2 assembled from released parts; attribute names match upstream so the checkpoint loads as-is."""

    def __init__(self, parts: dict):
        super().__init__()
        eva_sd = torch.load(parts["eva"], map_location="cpu")
        self.visual_encoder = _load_eva(eva_sd, IMG, USED_DEPTH)
        self.ln_vision = nn.LayerNorm(self.visual_encoder.num_features)  # torch default eps 1e-5, as upstream
        llama = LlamaForCausalLM.from_pretrained(parts["llama"], dtype=torch.float32, attn_implementation="eager")
        self.llama_model = get_peft_model(llama, _lora_config(parts["lora_rank"], parts["lora_alpha"]))
        self.llama_proj = nn.Linear(4 * self.visual_encoder.num_features, llama.config.hidden_size)

        # Saved with PEFT 0.2, where LoRA layers had no adapter name; this PEFT inserts ".default" at runtime.
        ckpt = torch.load(parts["ckpt"], map_location="cpu")["model"]
        for ab in ("lora_A", "lora_B"):
            ckpt = {k.replace(f".{ab}.weight", f".{ab}.default.weight"): v for k, v in ckpt.items()}
        msg = self.load_state_dict(ckpt, strict=False)
        assert not msg.unexpected_keys, msg.unexpected_keys
        lora = {k for k in self.state_dict() if ".lora_" in k}
        assert lora and lora <= ckpt.keys(), sorted(lora - ckpt.keys())
        assert {"llama_proj.weight", "llama_proj.bias"} <= ckpt.keys()
        self.float().eval()

    def embed_tokens(self, token_ids):
        return self.llama_model.base_model.model.model.embed_tokens(token_ids)

    def encode_img(self, image: torch.Tensor) -> torch.Tensor:
        image_embeds = self.ln_vision(self.visual_encoder(image))[:, 1:, :]
        bs, pn, hs = image_embeds.shape
        return self.llama_proj(image_embeds.view(bs, pn // 4, hs * 4))

    def forward(self, pixel_values: torch.Tensor, segments: list[list[list[int]]]) -> torch.Tensor:
        """get_context_emb per row: text, the row's image, text; then the LoRA-wrapped LLaMA on the embeddings
        (differentiable in `pixel_values`: the attack's gradient is taken through it)."""
        images = self.encode_img(pixel_values)
        assert len(segments) == len(images)
        rows = []
        for segs, img in zip(segments, images):
            assert len(segs) == 2, "one image per row: text before and after it"
            before, after = (self.embed_tokens(torch.tensor(s, dtype=torch.long)) for s in segs)
            rows.append(torch.cat([before, img, after], dim=0))
        assert len({r.shape[0] for r in rows}) == 1, [r.shape[0] for r in rows]
        return self.llama_model(inputs_embeds=torch.stack(rows)).logits.float()

    @torch.no_grad()
    def logits(self, pixel_values: np.ndarray, segments: list[list[list[int]]]) -> np.ndarray:
        return self(torch.from_numpy(np.asarray(pixel_values, np.float32)), segments).numpy()
