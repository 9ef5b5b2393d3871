"""Multiple choice by log-likelihood: the option letter the model finds most likely after the prompt."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LETTERS = "ABCDEFGHIJ"


@nnx.jit
def _last_logits(model, ids, mask, pixels):
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits = model(ids, pixels, mask, positions, row_images=True, last_only=True)
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)


def choose(model, tokenizer, prompts: list[np.ndarray], images: list[np.ndarray | None], num_choices: list[int],
           pad_id: int, length: int) -> list[int]:
    """Index of the most likely letter for each prompt (prompts left-padded to `length`)."""
    letter_ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + letter))[-1] for letter in LETTERS]
    size = model.config.vision.image_size
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    pixels = np.zeros((len(prompts), 3, size, size), np.float32)
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        ids[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = True
        if image is not None:
            pixels[row] = image
    log_probs = np.asarray(_last_logits(model, ids, mask, pixels))
    return [int(np.argmax(log_probs[row, letter_ids[:n]])) for row, n in enumerate(num_choices)]
