"""The random inputs both stacks are timed on: rows of one image + text, the prompt part unsupervised."""

from __future__ import annotations

import numpy as np

from vlguard_jax.data.chat import IGNORE
from vlguard_jax.models.config import LlavaConfig

BOS = 1
FIRST_TEXT_ID = 3


def prompt_ids(llava: LlavaConfig, rows: int, length: int, seed: int = 0) -> np.ndarray:
    """`[rows, length]`: BOS, the image's `num_image_tokens` image tokens, then random text ids."""
    text = length - 1 - llava.num_image_tokens
    if text < 1:
        raise ValueError(f"length {length} leaves no room for text after {llava.num_image_tokens} image tokens")
    high = min(llava.image_token_id, llava.text.vocab_size)
    words = np.random.RandomState(seed).randint(FIRST_TEXT_ID, high, (rows, text))
    image = np.full((rows, llava.num_image_tokens), llava.image_token_id)
    return np.concatenate([np.full((rows, 1), BOS), image, words], axis=1).astype(np.int32)


def pixels(llava: LlavaConfig, rows: int, seed: int = 0) -> np.ndarray:
    size = llava.vision.image_size
    return np.random.RandomState(seed + 1).randn(rows, 3, size, size).astype(np.float32)


def train_batch(llava: LlavaConfig, rows: int, length: int) -> dict[str, np.ndarray]:
    """Supervises the second half of each row's text (an answer), as a chat template would."""
    ids = prompt_ids(llava, rows, length)
    labels = ids.copy()
    answer_start = (1 + llava.num_image_tokens + length) // 2
    labels[:, :answer_start] = IGNORE
    return {"input_ids": ids, "labels": labels, "attention_mask": np.ones_like(ids, bool),
            "pixel_values": pixels(llava, rows)}
