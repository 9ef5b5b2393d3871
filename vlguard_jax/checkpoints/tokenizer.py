"""The tokenizer side of a checkpoint: the model's `<image>` and pad ids, which an original LLaVA or a Vicuna
tokenizer lacks (llava-hf's tokenizer is the original one plus `<image>` and `<pad>`), and a tokenizer written so
that it reloads tokenizing as it did."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from vlguard_jax import storage
from vlguard_jax.checkpoints.tensors import CheckpointError
from vlguard_jax.data.sources import IMAGE_PLACEHOLDER
from vlguard_jax.models.config import LlavaConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def add_special(tokenizer, token: str) -> None:
    """Appends `token` as a special token unless the vocabulary has it (llava-hf's `<image>` and `<pad>`)."""
    from transformers import AddedToken

    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)


def add_model_tokens(tokenizer, config: LlavaConfig, source) -> None:
    """Gives `tokenizer` (loaded from `source`) the model's `<image>` id and pad id, in place and always alike, so
    every start tokenizes the same: `<image>` is added when absent (a text-only model has none), then `<pad>` when
    the pad id is past the end."""
    image = None if config.vision is None else config.image_token_id
    if image is not None:
        add_special(tokenizer, IMAGE_PLACEHOLDER)
    pad = config.text.pad_token_id
    if pad is not None:
        if pad >= len(tokenizer):
            add_special(tokenizer, "<pad>")
        if pad < len(tokenizer):  # else the check below names the mismatch
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    for token, got, wanted in ((IMAGE_PLACEHOLDER, tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER), image),
                               ("the pad token", tokenizer.pad_token_id, pad)):
        if wanted is not None and got != wanted:
            raise CheckpointError(f"{source}: the tokenizer gives {token} the id {got} but the model expects "
                                  f"{wanted}; use the tokenizer that came with these weights")


def convert_tokenizer(source: Path, out: Path, config: LlavaConfig) -> str:
    """Writes the tokenizer of `source` with the model's special tokens into `out`; returns what it did."""
    if not any((Path(source) / name).exists() for name in TOKENIZER_FILES):
        return f"no tokenizer in {source}: copy the matching tokenizer files into {out} before using it"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    add_model_tokens(tokenizer, config, source)
    save_tokenizer(tokenizer, out)
    return f"wrote the tokenizer (<image> = {config.image_token_id}) to {out}"


def save_tokenizer(tokenizer, out: storage.PathLike) -> None:
    """Writes `tokenizer` into `out` (a folder or a bucket URI) so that `AutoTokenizer.from_pretrained` gives back
    the same ids. transformers 5 saves a LLaMA tokenizer's pre-tokenizer in tokenizer.json but not its `legacy` flag,
    and `LlamaTokenizer.__init__` rebuilds the pre-tokenizer from that flag (default False): a legacy tokenizer,
    LLaVA-1.5's, would reload non-legacy (`</s>USER` as `</s>` `USER`, not `</s>` `▁US` `ER`). The flag is written
    into tokenizer_config.json, which the reload passes to `__init__`."""
    with tempfile.TemporaryDirectory() as local:
        tokenizer.save_pretrained(local)
        if hasattr(tokenizer, "legacy"):
            config_path = Path(local) / "tokenizer_config.json"
            config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "legacy": tokenizer.legacy},
                                              indent=2))
        for file in sorted(Path(local).iterdir()):
            storage.write_bytes(storage.path(out) / file.name, file.read_bytes())
