"""Multiple choice by log-likelihood: the option letter the model finds most likely after the prompt."""

from __future__ import annotations

import numpy as np

from vlguard_jax.generate import Generator

LETTERS = "ABCDEFGHIJ"


def choose(generator: Generator, tokenizer, prompts: list[np.ndarray], images: list[np.ndarray | None],
           num_choices: list[int]) -> list[int]:
    """Index of the most likely letter for each prompt, from one prefill on the generator's mesh."""
    letter_ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + letter))[-1] for letter in LETTERS]
    log_probs = generator.next_token_log_probs(prompts, images)
    return [int(np.argmax(log_probs[row, letter_ids[:n]])) for row, n in enumerate(num_choices)]
