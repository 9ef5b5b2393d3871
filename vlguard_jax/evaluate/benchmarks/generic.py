"""Benchmarks in this project's own JSONL formats: multiple choice, and plain prompts judged for refusal."""

from __future__ import annotations

from pathlib import Path

from vlguard_jax.evaluate.benchmarks.base import Benchmark, Prompt, collect, rows, text
from vlguard_jax.evaluate.benchmarks.registry import register

LETTERS = "ABCDEFGHIJ"


@register("multiple_choice", "jsonl {id, question, choices, answer, image?}", "log-likelihood", "accuracy")
def multiple_choice(path: Path) -> list[Benchmark]:
    """JSONL `{id, question, choices: [..], answer: index or letter, image?}` (MMLU / ScienceQA style)."""

    def make(index, row):
        choices = [str(c) for c in row["choices"]]
        if len(choices) < 2:
            raise ValueError("needs at least two choices")
        answer = row["answer"]
        answer = LETTERS.index(answer) if isinstance(answer, str) else int(answer)
        if not 0 <= answer < len(choices):
            raise ValueError(f"answer {row['answer']!r} is not one of the {len(choices)} choices")
        lettered = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        prompt = f"{text(row['question'], 'question')}\n{lettered}\nAnswer with the option's letter."
        return Prompt(str(row.get("id", index)), prompt, row.get("image"), {"choices": len(choices), "answer": answer})

    return [collect(rows(path, "jsonl"), make, "multiple_choice", "accuracy")]


@register("jsonl", "jsonl {id, prompt, image?}", "keywords", "refusal_rate")
def generic(path: Path) -> list[Benchmark]:
    """JSONL `{id, prompt, image?}`: responses are judged for refusal."""
    make = lambda i, row: Prompt(str(row.get("id", i)), text(row["prompt"], "prompt"), row.get("image"))
    return [collect(rows(path, "jsonl"), make, Path(path).stem, "refusal_rate")]
