"""What an audit will cost, before it runs: the exchanges of a file and the tokens of their Llama Guard prompts,
counted with the judge's tokenizer and chat template (no weights are loaded), and the tokens a prefill computes once
each prompt is padded to its length bucket (what `plan --audit`'s seconds per token apply to)."""

from __future__ import annotations

import os

import numpy as np

from vlguard_jax.audit.exchanges import read_input
from vlguard_jax.buckets import bucket
from vlguard_jax.evaluate.judges.llama_guard import GuardPrompts
from vlguard_jax.generate.sampling import PROMPT_BUCKETS

BATCH = 2048  # conversations tokenized together


def count_tokens(data: str | os.PathLike, format: str, judge_model: str) -> dict:
    audit = read_input(data, format)
    prompts = GuardPrompts(judge_model)
    lengths = []
    for start in range(0, len(audit.conversations), BATCH):
        items = [e.item for ordinal in range(start, min(start + BATCH, len(audit.conversations)))
                 for e in audit.exchanges(ordinal)]
        lengths += prompts.lengths(items)
    lengths = np.asarray(lengths, np.int64)
    return {"conversations": len(audit.conversations), "skipped_records": len(audit.records.skips),
            "exchanges": int(lengths.size), "prompt_tokens": int(lengths.sum()),
            "bucketed_tokens": sum(bucket(int(n), PROMPT_BUCKETS) for n in lengths),
            "mean_prompt_tokens": round(float(lengths.mean()), 1) if lengths.size else None,
            "max_prompt_tokens": int(lengths.max()) if lengths.size else None}
