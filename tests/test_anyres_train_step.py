"""A LoRA step on the tiny LLaVA-OneVision equals transformers + PEFT + torch AdamW within 1e-5: images of two aspect
ratios (one pooled) and a text-only row, in the training batch's row layout (row b, image b)."""

import numpy as np
import jax.numpy as jnp
import torch
from flax import nnx
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

import vlguard_jax
from anyres_fixtures import IMAGE_TOKEN, SIZES, build_onevision, images
from peft_fixtures import assert_adapters_equal, share_adapters
from test_anyres_parity import hf_processor
from test_train_step import LR, PROJECTOR_LR, TARGETS, our_step, torch_step
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models.lora import LoraConfig, apply_lora


def training_batch(hf, inputs: VisionInputs):
    """Rows 0 and 1 carry an image each (tall; pooled), row 2 is text-only and right-padded; prompts untrained."""
    sizes = [SIZES[0], SIZES[3]]
    pictures = images(sizes, seed=3)
    counts = [inputs.tokens(size) for size in sizes]
    rng = np.random.RandomState(3)
    length = max(counts) + 12
    ids = rng.randint(3, IMAGE_TOKEN, size=(3, length))
    mask = np.ones_like(ids)
    for row, count in enumerate(counts):
        ids[row, 1:1 + count] = IMAGE_TOKEN
    mask[2, -5:], ids[2, -5:] = 0, 0
    labels = np.where(mask.astype(bool) & (ids != IMAGE_TOKEN), ids, -100)
    labels[:, :2] = -100
    labels[:, 1:][~mask[:, :-1].astype(bool)] = -100
    ours = {"input_ids": ids, "attention_mask": mask.astype(bool), "labels": labels,
            **inputs.stack([inputs.encode(p) for p in pictures] + [None])}
    theirs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                  **hf_processor(hf)(pictures, return_tensors="pt"))
    return {k: jnp.asarray(v) for k, v in ours.items()}, theirs


def test_onevision_lora_step_matches_peft(tmp_path):
    hf = build_onevision(seed=5)
    hf.save_pretrained(tmp_path)
    model = vlguard_jax.load_pretrained(tmp_path)
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
    peft_model = get_peft_model(hf, PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    peft_layers = peft_model.base_model.model.model.language_model.layers
    torch.manual_seed(0)
    share_adapters(model.language_model.model.layers, peft_layers)
    projector = list(peft_model.base_model.model.model.multi_modal_projector.parameters())
    for p in projector:
        p.requires_grad_(True)
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    ours_batch, theirs_batch = training_batch(hf, VisionInputs.of(model.config))
    torch_loss = torch_step(peft_model, {LR: lora, PROJECTOR_LR: projector}, theirs_batch)

    graphdef, trainable, frozen, before, after, metrics = our_step(model, "lora", ours_batch)
    assert abs(float(metrics["loss"]) - torch_loss) < 1e-5
    nnx.replace_by_pure_dict(trainable, after.params)
    updated = nnx.merge(graphdef, trainable, frozen)
    assert_adapters_equal(updated.language_model.model.layers, peft_layers)
    hf_projector = peft_model.base_model.model.model.multi_modal_projector
    for i in (1, 2):
        ours, theirs = getattr(updated.multi_modal_projector, f"linear_{i}"), getattr(hf_projector, f"linear_{i}")
        np.testing.assert_allclose(np.asarray(ours.kernel[...]), theirs.weight.detach().numpy().T, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ours.bias[...]), theirs.bias.detach().numpy(), atol=1e-5)
    moved = jnp.abs(after.params["multi_modal_projector"]["linear_1"]["kernel"]
                    - before.params["multi_modal_projector"]["linear_1"]["kernel"]).max()
    assert float(moved) > 1e-4  # the projector's gradient came through the packed, pooled features
    assert "image_newline" not in after.params  # LoRA trains adapters and projector, as LLaVA-NeXT's mm_mlp_adapter
