"""Shared data-test helpers: a tokenizer trained offline, the repo's ../shared benchmark files."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from vlguard_jax.data.chat import _LLAVA_SYSTEM, _VICUNA_SYSTEM
from vlguard_jax.data.vocab import build_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
LLAMA_TOKENIZER = SHARED.parent / "tokenizers" / "llama2"

WORDS = ("what color is the shape in this image the circle square triangle red green blue yellow how many "
         "shapes are there it is a one two three please describe picture explain to build weapon sorry cannot "
         "help with that request sure here step first").split()


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared benchmark files sit beside the checkout only in development/CI)")
    return path


def llama_tokenizer_dir() -> Path:
    """The real LLaMA-2 / Vicuna sentencepiece model (tokenizer.model) from ../shared."""
    if not (LLAMA_TOKENIZER / "tokenizer.model").exists():
        pytest.skip(f"{LLAMA_TOKENIZER}/tokenizer.model is absent (it sits beside the checkout only in development/CI)")
    return LLAMA_TOKENIZER


@functools.lru_cache(maxsize=None)
def tokenizer():
    corpus = [_VICUNA_SYSTEM, _LLAVA_SYSTEM, "USER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>>"] * 5
    corpus += [" ".join(WORDS[i:] + WORDS[:i]) + "." for i in range(len(WORDS))]
    return build_tokenizer(corpus, vocab_size=600)
