"""End-to-end check of the model stack against transformers, offline, in under a minute on a CPU.

Builds a small random LLaVA-1.5-shaped model with transformers (fp32), loads it with vlguard-jax, compares
logits on a batch that mixes an image sample, a text-only sample and padding, exports it back to the llava-hf
layout and reloads that with transformers. Prints the max abs differences; exits non-zero above 1e-4.
"""

import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import vlguard_jax


def main() -> int:
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                       num_attention_heads=4, image_size=56, patch_size=14),
        text_config=LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5),
        image_token_index=500, vision_feature_layer=-2, vision_feature_select_strategy="default")
    reference = LlavaForConditionalGeneration(config).eval()
    tokens = config.vision_config.image_size // config.vision_config.patch_size
    tokens *= tokens
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 500, size=(2, tokens + 12))
    ids[0, 1:1 + tokens] = 500
    mask = np.ones_like(ids)
    mask[1, -5:] = 0
    pixels = rng.randn(1, 3, 56, 56).astype(np.float32)

    def torch_logits(model):
        with torch.no_grad():
            return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         pixel_values=torch.tensor(pixels)).logits.numpy()[mask.astype(bool)]

    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(Path(tmp) / "hf")
        model = vlguard_jax.load_pretrained(Path(tmp) / "hf")
        ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))[mask.astype(bool)]
        load_diff = np.abs(ours - torch_logits(reference)).max()
        exported = vlguard_jax.save_pretrained(model, Path(tmp) / "export")
        reloaded = LlavaForConditionalGeneration.from_pretrained(exported).eval()
        export_diff = np.abs(ours - torch_logits(reloaded)).max()
    print(f"logits vs transformers:           max abs diff {load_diff:.2e}")
    print(f"exported weights via transformers: max abs diff {export_diff:.2e}")
    ok = max(load_diff, export_diff) <= 1e-4
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
