"""MMLU (Hendrycks et al.): 5-shot prompts in the paper's format, scored by the likelihood of the answer letter.

The prompt is the original evaluation's (hendrycks/test `evaluate.py`), so accuracies are comparable with published
ones: a header naming the subject, the subject's first five dev questions with their answers, then the test
question ending in "Answer:".
"""

from __future__ import annotations

from pathlib import Path

from vlguard_jax.data.sources import DataError, Skip
from vlguard_jax.evaluate.benchmarks.base import Benchmark, Prompt, collect, rows, text
from vlguard_jax.evaluate.benchmarks.registry import register

LETTERS = "ABCD"
SHOTS = 5


def question(row: dict) -> tuple[str, int]:
    """`question\\nA. …\\nD. …\\nAnswer:` and the answer's index, from a `question,choice0..3,answer` row."""
    answer = int(row["answer"])
    if not 0 <= answer < len(LETTERS):
        raise ValueError(f"answer {row['answer']!r} is not 0 to 3")
    choices = "".join(f"\n{letter}. {text(row[f'choice{i}'], f'choice{i}', strip=False)}"
                      for i, letter in enumerate(LETTERS))
    return f"{text(row['question'], 'question', strip=False)}{choices}\nAnswer:", answer


def header(subject: str, dev: list[dict]) -> str:
    """The subject line and the solved dev examples that precede every test question of `subject`."""
    shots = "".join(f"{q} {LETTERS[a]}\n\n" for q, a in map(question, dev))
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n{shots}"


@register("mmlu", "directory with dev/SUBJECT_dev.csv and test/SUBJECT_test.csv", "log-likelihood", "accuracy")
def mmlu(directory: Path) -> list[Benchmark]:
    """One `mmlu` subset of every subject's test questions, `metadata["category"]` the subject."""
    tests = sorted((directory / "test").glob("*_test.csv"))
    if not tests:
        raise DataError(f"{directory}: no test/SUBJECT_test.csv files (give MMLU's data directory)")
    benchmark = Benchmark("mmlu", [], "accuracy")
    for path in tests:
        subject = path.name[: -len("_test.csv")]
        dev = rows(directory / "dev" / f"{subject}_dev.csv", "csv")[:SHOTS]
        if len(dev) < SHOTS:
            raise DataError(f"{directory}/dev/{subject}_dev.csv: {len(dev)} rows, {SHOTS} needed")
        try:
            context = header(subject, dev)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{directory}/dev/{subject}_dev.csv: malformed row ({e}): its few-shot examples precede "
                            f"every {subject} question") from e

        def make(index, row, subject=subject, context=context):
            prompt, answer = question(row)
            return Prompt(f"mmlu-{subject}-{index}", context + prompt, None,
                          {"choices": len(LETTERS), "answer": answer, "category": subject})

        part = collect(rows(path, "csv"), make, "mmlu", "accuracy")
        benchmark.prompts += part.prompts
        benchmark.skips += [Skip(f"mmlu-{subject}-{skip.id}", skip.reason) for skip in part.skips]
    return [benchmark]
