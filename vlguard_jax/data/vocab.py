"""A small LLaMA-style tokenizer trained offline, for the demo and tests (no hub download).

Same conventions as the LLaMA/Vicuna tokenizer LLaVA uses: SentencePiece-style metaspace BPE with byte
fallback, `<unk>`=0, `<s>`=1 (prepended), `</s>`=2, then llava-hf's added `<image>` and `<pad>` tokens.
"""

from __future__ import annotations

import os
from typing import Iterable

from vlguard_jax.data.sources import IMAGE_PLACEHOLDER

SPECIAL = ("<unk>", "<s>", "</s>")
TEMPLATE_WORDS = ("USER", "ASSISTANT", "INST", "SYS", "A", "chat", "between", "a", "curious", "user", "human", "and",
                  "an", "artificial", "intelligence", "assistant", "The", "gives", "helpful", "detailed", "polite",
                  "answers", "to", "the", "questions")


def _template_corpus() -> list[str]:
    """Template words after a space and right after punctuation, so both forms become single tokens, as in
    LLaMA's vocabulary (LLaVA's label arithmetic relies on that)."""
    return [f"{w} .{w} " * 50 for w in TEMPLATE_WORDS]


def build_tokenizer(corpus: Iterable[str], out_dir: str | os.PathLike | None = None, vocab_size: int = 1024):
    """Trains the tokenizer on `corpus`; saves it to `out_dir` when given; returns a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Punctuation(behavior="isolated")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL, *byte_tokens],
                                  show_progress=False)
    core.train_from_iterator([*corpus, *_template_corpus()], trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", add_bos_token=True)
    tokenizer.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer
