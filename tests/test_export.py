"""Exported PEFT adapters and merged weights, loaded by peft/transformers, reproduce our logits."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from peft import PeftModel
from transformers import LlavaForConditionalGeneration as HFLlava

import vlguard_jax
from hf_fixtures import build_hf, hf_logits, mixed_batch, save_layout
from test_hf_parity import assert_logits_match, forward
from vlguard_jax.checkpoints.peft import export_merged, export_peft
from vlguard_jax.models.layers import Linear
from vlguard_jax.models.lora import LoraConfig, apply_lora


def adapted_model(ckpt):
    model = vlguard_jax.load_pretrained(ckpt)
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.1), nnx.Rngs(0))
    keys = iter(jax.random.split(jax.random.key(1), 64))
    for _, module in nnx.iter_graph(model):  # as if trained: non-zero B, moved projector
        if isinstance(module, Linear) and module.lora_b is not None:
            module.lora_b[...] = 0.2 * jax.random.normal(next(keys), module.lora_b.shape)
    kernel = model.multi_modal_projector.linear_2.kernel
    kernel[...] = kernel[...] + 0.1
    return model


def test_peft_adapter_and_merged_export_reproduce_logits(tmp_path):
    hf = build_hf("gqa", seed=21)
    ckpt = save_layout(hf, tmp_path, "hf_save")
    model = adapted_model(ckpt)
    ids, mask, pixels = mixed_batch(hf.config, seed=21)
    ours = forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    base = hf_logits(hf, ids, mask, pixels)
    assert np.abs(np.asarray(ours) - base)[mask.astype(bool)].max() > 1e-2  # the adapters change the output

    adapter = export_peft(model, tmp_path / "adapter", alpha=8.0, dropout=0.1, rslora=False,
                          base_model=str(ckpt), projector=True)
    peft_model = PeftModel.from_pretrained(HFLlava.from_pretrained(ckpt), adapter).eval()
    assert_logits_match(ours, hf_logits(peft_model, ids, mask, pixels), mask)
    vision_q = peft_model.base_model.model.model.vision_tower.encoder.layers[0].self_attn.q_proj
    assert not hasattr(vision_q, "lora_A")  # only the language model's modules are adapted

    merged, info = HFLlava.from_pretrained(export_merged(model, tmp_path / "merged"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_logits_match(ours, hf_logits(merged.eval(), ids, mask, pixels), mask)
    assert model.language_model.model.layers.self_attn.q_proj.lora_a is not None  # export left the model as is
