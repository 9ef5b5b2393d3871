"""Tiny random LLaVA checkpoints built offline with transformers, written in each supported layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN = 100
VOCAB = 128

# Each variant differs in the facts conversion bugs hide in (GQA, feature layer, strategy, sizes, RoPE, eps).
VARIANTS = {
    "mha": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                    image_size=28, patch_size=14),
        text=dict(num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5),
        llava=dict(vision_feature_layer=-2, vision_feature_select_strategy="default"),
    ),
    "gqa": dict(
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                    image_size=32, patch_size=8, hidden_act="gelu"),
        text=dict(num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
        llava=dict(vision_feature_layer=-1, vision_feature_select_strategy="full"),
    ),
    "llama3_rope_bias": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=30, patch_size=10),
        text=dict(num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5, attention_bias=True,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}),
        llava=dict(vision_feature_layer=1, vision_feature_select_strategy="default"),
    ),
}


def build_hf(variant: str = "mha", seed: int = 0) -> LlavaForConditionalGeneration:
    spec = VARIANTS[variant]
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(**spec["vision"])
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       max_position_embeddings=256, **spec["text"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, **spec["llava"])
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger-than-init weights, so that logits are O(1) and any mismatch shows
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def runtime_to_ondisk(key: str, vision_model: bool = True) -> str:
    """transformers v5 runtime names → llava-hf on-disk names (REFERENCE §2a)."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("model.vision_tower."):
        return "vision_tower." + ("vision_model." if vision_model else "") + key[len("model.vision_tower."):]
    if key.startswith("model.multi_modal_projector."):
        return key[len("model."):]
    raise AssertionError(key)


LAYOUTS = ("hf_save", "ondisk", "runtime", "runtime_vision_model")


def save_layout(model: LlavaForConditionalGeneration, directory: Path, layout: str) -> Path:
    """Writes the model in one layout: `hf_save` is what transformers v5 itself writes."""
    model.save_pretrained(directory / "hf")
    if layout == "hf_save":
        return directory / "hf"
    out = directory / layout
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(directory / "hf" / "config.json", out / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "ondisk":
        state = {runtime_to_ondisk(k): v for k, v in state.items()}
    elif layout == "runtime_vision_model":
        state = {k.replace("model.vision_tower.", "model.vision_tower.vision_model."): v for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def mixed_batch(model_config, seed: int = 0):
    """Two image samples (one left-padded), one text-only sample with right padding."""
    rng = np.random.RandomState(seed)
    v = model_config.vision_config
    tokens_per_image = (v.image_size // v.patch_size) ** 2 + (model_config.vision_feature_select_strategy == "full")
    length = tokens_per_image + 10
    ids = rng.randint(3, IMAGE_TOKEN, size=(3, length))
    mask = np.ones((3, length), np.int64)
    ids[0, 1:1 + tokens_per_image] = IMAGE_TOKEN  # image sample, no padding
    mask[1, -4:] = 0  # text-only, right padded
    ids[1, -4:] = 0
    mask[2, :3] = 0  # image sample, left padded
    ids[2, :3] = 0
    ids[2, 4:4 + tokens_per_image] = IMAGE_TOKEN
    ids[:, 0] = 1
    ids[2, 3] = 1
    pixels = rng.randn(2, 3, v.image_size, v.image_size).astype(np.float32)
    return ids, mask, pixels


def hf_logits(model, ids, mask, pixels) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    pixel_values=None if pixels is None else torch.tensor(pixels))
    return out.logits.numpy()


def write_config(path: Path, config: dict) -> None:
    path.write_text(json.dumps(config, indent=2))
