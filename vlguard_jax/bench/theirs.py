"""The PyTorch stack on the same device and workload: transformers' LLaVA, PEFT LoRA, torch AdamW, `generate`.

On accelerators it runs as such stacks do: frozen weights in bf16, trainable weights in fp32 under bf16
autocast; on CPU everything is fp32. Imported only by the benchmark (torch and peft come with the test extra).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlavaConfig, LlavaForConditionalGeneration

from vlguard_jax.bench.ours import LORA_DROPOUT
from vlguard_jax.bench.shapes import BenchSize
from vlguard_jax.bench.timing import seconds
from vlguard_jax.bench.workload import pixels, prompt_ids, train_batch

# The modules `models.lora.DEFAULT_TARGETS` adapts, in PEFT's module naming.
TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _autocast():
    if device().type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _dtype() -> torch.dtype:
    return torch.bfloat16 if device().type == "cuda" else torch.float32


def build(size: BenchSize) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    with torch.device(device()):
        model = LlavaForConditionalGeneration(LlavaConfig(**size.model.to_hf()))
    return model.to(_dtype())


def train_step(size: BenchSize, mode: str) -> Callable[[], None]:
    """A warmed-up `run()` doing one optimizer step: forward, backward, clip, AdamW."""
    model = build(size)
    model.requires_grad_(False)
    if size.remat != "none":
        model.gradient_checkpointing_enable()
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=size.lora_rank, lora_alpha=2 * size.lora_rank,
                                                 lora_dropout=LORA_DROPOUT, target_modules=TARGETS))
        model.base_model.model.model.multi_modal_projector.requires_grad_(True)
    else:
        model.model.multi_modal_projector.requires_grad_(True)
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)
    batch = {k: torch.as_tensor(v, device=device()) for k, v in train_batch(size.model, size.train_rows,
                                                                             size.train_len).items()}
    batch["pixel_values"] = batch["pixel_values"].to(_dtype())
    batch["input_ids"], batch["labels"] = batch["input_ids"].long(), batch["labels"].long()

    def run() -> None:
        with _autocast():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()

    run()
    return run


def decode(size: BenchSize, rows: int, prompt_len: int, new_tokens: int) -> tuple[Callable[[], None], float]:
    """A warmed-up greedy `generate` of exactly `new_tokens` per row, and the seconds of its first call."""
    model = build(size).eval()
    ids = torch.as_tensor(prompt_ids(size.model, rows, prompt_len), device=device(), dtype=torch.long)
    images = torch.as_tensor(pixels(size.model, rows), device=device()).to(_dtype())

    def run() -> None:
        with torch.no_grad():
            model.generate(input_ids=ids, pixel_values=images, attention_mask=torch.ones_like(ids),
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        _sync()

    return run, seconds(run)
