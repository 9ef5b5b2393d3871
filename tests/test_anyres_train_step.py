"""A LoRA step on the tiny LLaVA-OneVision equals transformers + PEFT + torch AdamW within 1e-5: images of two aspect
ratios (one pooled) and a text-only row, in the training batch's row layout (row b, image b)."""

import numpy as np
import jax.numpy as jnp
import torch

import vlguard_jax
from anyres_fixtures import IMAGE_TOKEN, SIZES, build_onevision, images
from test_anyres_parity import hf_processor
from test_train_step import lora_steps_agree
from vlguard_jax.data.vision_inputs import VisionInputs


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
    # the projector's gradient comes through the packed, pooled features (lora_steps_agree checks it moved)
    _, after, _ = lora_steps_agree(hf, model, *training_batch(hf, VisionInputs.of(model.config)))
    assert "image_newline" not in after.params  # LoRA trains adapters and projector, as LLaVA-NeXT's mm_mlp_adapter
