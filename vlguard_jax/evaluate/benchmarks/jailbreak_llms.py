"""JailbreakLLMs (Shen et al., "Do Anything Now", verazuo/jailbreak_llms): 390 forbidden questions over 13 content
policies, asked bare and inside in-the-wild jailbreak prompts.

The prompts file has hundreds of prompts; a run asks every question inside a seeded sample of `sample` of them (the
same seed, the same prompts), so that ASR per policy (`metadata["category"]`) is affordable and reproducible.
"""

from __future__ import annotations

import random
from pathlib import Path

from vlguard_jax.data.sources import DataError, Skip
from vlguard_jax.evaluate.benchmarks.base import Benchmark, Prompt, collect, rows, text
from vlguard_jax.evaluate.benchmarks.registry import register

PLACEHOLDER = "[INSERT PROMPT HERE]"


def jailbreak(template: str, question: str) -> str:
    """The question in place of the prompt's placeholder; after a blank line where the prompt has none."""
    return template.replace(PLACEHOLDER, question) if PLACEHOLDER in template else f"{template}\n\n{question}"


@register("jailbreak_llms", "forbidden_question_set.csv[,jailbreak_prompts_*.csv]", "keywords", "asr",
          max_files=2, sampled=True)
def jailbreak_llms(questions_path: Path, prompts_path: Path | None = None, sample: int = 5,
                   seed: int = 0) -> list[Benchmark]:
    """`jailbreak_llms_questions`: the bare questions; with a prompts file also `jailbreak_llms_prompts`: each
    question inside each of `sample` prompts drawn with `seed` from the file's well-formed rows."""
    questions = collect(rows(questions_path, "csv"), _question, "jailbreak_llms_questions", "asr")
    if prompts_path is None:
        return [questions]
    templates, skips = [], []
    for index, row in enumerate(rows(prompts_path, "csv")):
        try:
            templates.append((index, text(row["prompt"], "prompt", strip=False)))
        except (KeyError, TypeError, ValueError) as e:
            skips.append(Skip(f"prompt-{index}", f"malformed row of {prompts_path.name}: {type(e).__name__}: {e}"))
    if not 0 < sample <= len(templates):
        raise DataError(f"{prompts_path}: cannot sample {sample} of its {len(templates)} well-formed prompts")
    chosen = sorted(random.Random(seed).sample(templates, sample))
    jailbroken = [Prompt(f"{q.id}-prompt{index}", jailbreak(template, q.text), None,
                         {**q.metadata, "jailbreak_prompt": index, "question": q.text})
                  for index, template in chosen for q in questions.prompts]
    return [questions, Benchmark("jailbreak_llms_prompts", jailbroken, "asr", questions.skips + skips)]


def _question(index: int, row: dict) -> Prompt:
    policy = text(row["content_policy_name"], "content_policy_name")
    return Prompt(f"jailbreak_llms-{int(row['content_policy_id'])}-{int(row['q_id'])}",
                  text(row["question"], "question"), None, {"category": policy})
