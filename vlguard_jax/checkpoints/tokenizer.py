"""Tokenizer side of a conversion: the llava-hf tokenizer is the original one plus `<image>` and `<pad>`."""

from __future__ import annotations

from pathlib import Path

from vlguard_jax.checkpoints.tensors import CheckpointError
from vlguard_jax.models.config import LlavaConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def convert_tokenizer(source: Path, out: Path, config: LlavaConfig) -> str:
    """Writes the tokenizer of `source` with the model's special tokens into `out`; returns what it did."""
    if not any((Path(source) / name).exists() for name in TOKENIZER_FILES):
        return f"no tokenizer in {source}: copy the matching tokenizer files into {out} before using it"
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    added = {"<image>": config.image_token_id, "<pad>": config.text.pad_token_id}
    for token, expected in added.items():
        if expected is not None and token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        got = tokenizer.convert_tokens_to_ids(token)
        if expected is not None and got != expected:
            raise CheckpointError(
                f"{source}: the tokenizer gives {token} the id {got} but the model expects {expected}; "
                f"use the tokenizer that came with these weights"
            )
    if config.text.pad_token_id is not None:
        tokenizer.pad_token = "<pad>"
    tokenizer.save_pretrained(out)
    return f"wrote the tokenizer (<image> = {config.image_token_id}) to {out}"
