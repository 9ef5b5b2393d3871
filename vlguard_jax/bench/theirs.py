"""The PyTorch stack on the same device and workload: transformers' LLaVA (MiniGPT-v2's own model code for its
sizes, `theirs_minigpt`), PEFT LoRA, torch AdamW, `generate`; Qi et al.'s PGD step on the pixels.

On accelerators it runs as such stacks do: frozen weights in bf16, trainable weights in fp32 under bf16
autocast; on CPU everything is fp32. Imported only by the benchmark (torch and peft come with the test extra).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlavaConfig, LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

from vlguard_jax.bench.eval_workload import MAX_NEW_TOKENS, PAD, EvalWorkload, Timed, check_lengths
from vlguard_jax.bench.ours import LORA_DROPOUT
from vlguard_jax.bench.shapes import BenchSize
from vlguard_jax.bench.theirs_minigpt import TorchMiniGPTv2
from vlguard_jax.bench.timing import seconds
from vlguard_jax.bench.workload import pixels, prompt_ids, train_batch

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


def _llava(llava) -> LlavaForConditionalGeneration:
    return LlavaForConditionalGeneration(LlavaConfig(**llava.to_hf()))


# layout → (the PyTorch model, its projector and the rest full fine-tuning trains)
STACKS = {
    "llava": (_llava, lambda m: (m.model.multi_modal_projector, [m.model.language_model, m.lm_head])),
    "minigpt_v2": (TorchMiniGPTv2, lambda m: (m.llama_proj, [m.llm])),
}


def build(size: BenchSize):
    torch.manual_seed(0)
    with torch.device(device()):
        model = STACKS[size.model.layout][0](size.model)
    return model.to(_dtype())


def train_step(size: BenchSize, mode: str) -> Callable[[], None]:
    """A warmed-up `run()` doing one optimizer step: forward, backward, clip, AdamW."""
    model = build(size)
    model.requires_grad_(False)
    if size.remat != "none":
        model.gradient_checkpointing_enable()
    projector, rest = STACKS[size.model.layout][1](model)
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=size.lora_rank, lora_alpha=2 * size.lora_rank,
                                                 lora_dropout=LORA_DROPOUT, target_modules=size.peft_targets))
    for part in [projector] + (rest if mode == "full" else []):
        part.requires_grad_(True)
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


def attack_step(model, batch: dict[str, np.ndarray], origin: np.ndarray, start: np.ndarray, budget,
                mean: np.ndarray, std: np.ndarray) -> Callable[[], float]:
    """`run()`: one PGD step as Qi et al.'s `attack_constrained` takes it (llava_llama_2_utils/visual_attacker.py),
    returning the loss: the frozen model, the perturbation a leaf tensor from `start − origin`, the image
    normalised and repeated over the rows, forward with labels, backward, a signed step clamped to ±ε and to
    [0, 1], the gradient zeroed."""
    model.eval().requires_grad_(False)
    x = torch.as_tensor(origin, device=device())[None]
    noise = (torch.as_tensor(start, device=device())[None] - x).requires_grad_(True)
    mean, std = (torch.as_tensor(v, device=device())[None, :, None, None] for v in (mean, std))
    ids = torch.as_tensor(batch["input_ids"], device=device()).long()
    labels = torch.as_tensor(batch["labels"], device=device()).long()
    mask = torch.as_tensor(batch["attention_mask"], device=device()).long()
    epsilon, alpha = budget.epsilon, budget.alpha

    def run() -> float:
        images = ((x + noise - mean) / std).repeat(len(ids), 1, 1, 1).to(_dtype())
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=images, labels=labels).loss
        loss.backward()
        noise.data = (noise.data - alpha * noise.grad.detach().sign()).clamp(-epsilon, epsilon)
        noise.data = (noise.data + x.data).clamp(0, 1) - x.data
        noise.grad.zero_()
        model.zero_grad()
        return loss.item()

    return run


class ForceLengths(LogitsProcessor):
    """Row i's `lengths[i]`-th new token is EOS and no earlier one is: `generate` then ends each row after exactly
    its scheduled number of tokens (EOS included), as our engines' per-row limits do."""

    def __init__(self, prompt_len: int, lengths: np.ndarray, eos: int):
        self.prompt_len, self.eos = prompt_len, eos
        self.last_step = torch.as_tensor(np.asarray(lengths) - 1, device=device())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len  # tokens this row has generated before the one picked now
        now = (self.last_step == step)[:, None]
        is_eos = torch.arange(scores.shape[-1], device=scores.device)[None, :] == self.eos
        return scores.masked_fill(now != is_eos, -float("inf"))


def generated_lengths(new_tokens: torch.Tensor, eos: int) -> list[int]:
    """Tokens up to and including each row's first EOS (the whole row where there is none)."""
    rows = []
    for row in new_tokens.cpu().numpy():
        stops = np.flatnonzero(row == eos)
        rows.append(int(stops[0]) + 1 if len(stops) else len(row))
    return rows


def eval_generate(size: BenchSize, work: EvalWorkload, batch: int) -> Timed:
    """transformers' greedy `generate` over the evaluation workload as its users run one: the requests in order,
    `batch` at a time, left-padded, each batch until its longest row ends; each row's length forced to the
    schedule (every row's length checked after each run)."""
    model = build(size).eval()
    eos = size.model.text.eos_token_id
    batches = []
    for start in range(0, len(work.prompts), batch):
        rows = list(range(start, min(start + batch, len(work.prompts))))
        length = max(len(work.prompts[r]) for r in rows)
        ids = np.full((len(rows), length), PAD, np.int64)
        mask = np.zeros((len(rows), length), np.int64)
        for i, r in enumerate(rows):
            ids[i, length - len(work.prompts[r]):] = work.prompts[r]
            mask[i, length - len(work.prompts[r]):] = 1
        images = np.stack([work.image(r) for r in rows])
        batches.append((torch.as_tensor(ids, device=device()), torch.as_tensor(mask, device=device()),
                        torch.as_tensor(images, device=device()).to(_dtype()), length, work.lengths[rows]))

    seen: list = []

    def run(batches=batches, scheduled=work.lengths) -> None:
        got = []
        with torch.no_grad():
            for ids, mask, images, length, lengths in batches:
                out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=images,
                                     max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=PAD,
                                     eos_token_id=eos,
                                     logits_processor=LogitsProcessorList([ForceLengths(length, lengths, eos)]))
                got += generated_lengths(out[:, length:], eos)
        _sync()
        seen.clear()
        check_lengths([np.zeros(n) for n in got], scheduled, "transformers generate", seen)

    # Warm-up (nothing to compile): the first batch, two tokens a row, twice.
    ids, mask, images, length, lengths = batches[0]
    short = [(ids, mask, images, length, np.full_like(lengths, 2))]
    first_s = seconds(lambda: run(short, np.full_like(lengths, 2)))
    return Timed(run, first_s, lambda: 0, seconds(lambda: run(short, np.full_like(lengths, 2))), seen=seen)
