"""Which judge decides each benchmark subset, and each judge built once with the options it needs.

A judge is named `NAME[:RUBRIC]`: `keywords`, `keywords_normalized`, `llama_guard`, `beaver_dam`, `openai`
(`openai:harmful`) or `openai:RUBRIC`. A subset is judged by the protocol's judge (`--judge`) when that judge can
decide its metric and either the benchmark has no judge of its own (its default is the refusal keywords) or
`--judge` was given; otherwise by the benchmark's own judge (AlpacaEval's pairwise preference, MM-SafetyBench's
per-scenario prompts). Multiple choice (by log-likelihood) and fine-tuning tasks (by their answers) need no judge.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from vlguard_jax.config import ConfigError
from vlguard_jax.evaluate.benchmarks import Benchmark
from vlguard_jax.evaluate.judges import Judge, judges, make_judge
from vlguard_jax.evaluate.protocols import Protocol
from vlguard_jax.evaluate.report import HARM_METRICS

REFUSAL_JUDGES = ("keywords", "keywords_normalized")
MODEL_JUDGES = ("llama_guard", "beaver_dam")  # local checkpoints, run on the mesh by every process; the others
# (keywords, the network judge openai) by process 0 alone, so each item is judged (and paid for) once per job
PAIRWISE_RUBRICS = ("alpaca_eval", "vlguard_safe_safe")  # the others decide harm
REFUSAL_METRICS = ("asr", "compliance", "refusal_rate", "harmful_score")


def decides(judge: str) -> tuple[str, ...]:
    """The metrics a judge's judgments score."""
    name, _, rubric = judge.partition(":")
    if name in REFUSAL_JUDGES:
        return REFUSAL_METRICS
    return ("win_rate",) if rubric in PAIRWISE_RUBRICS else HARM_METRICS


def assign(benchmark: Benchmark, protocol: Protocol) -> str | None:
    """The judge of one subset (None: scored by log-likelihood or by its task's answers); a subset no judge can
    score is refused."""
    if benchmark.metric in ("accuracy", "finetune_accuracy"):
        return None
    if benchmark.metric in decides(protocol.judge) and (
            benchmark.judge in REFUSAL_JUDGES or "judge" in protocol.overridden()):
        return protocol.judge
    if benchmark.metric in decides(benchmark.judge):
        return benchmark.judge
    raise ConfigError(f"{benchmark.name}: its metric {benchmark.metric} is decided by neither the judge "
                      f"{protocol.judge!r} nor its own {benchmark.judge!r}")


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
    url: str | None = None  # openai: the server's base URL (http://host:port/v1)
    model: str | None = None  # openai: the judge model's name; llama_guard, beaver_dam: its checkpoint directory
    api_key_env: str = "OPENAI_API_KEY"
    cache_dir: str | os.PathLike | None = None  # openai: cached replies (a `storage` path); a re-run sends nothing
    concurrency: int = 8  # openai: requests in flight
    dtype: str = "bfloat16"  # model judges
    threshold: float | None = None  # llama_guard: flag by P(unsafe) ≥ threshold from one prefill (None: generate)


def check(judge: str, options: JudgeOptions, user: str) -> None:
    """Refuses, before anything loads, a judge whose options are missing; `user` names who needs it."""
    name = judge.partition(":")[0]
    if name not in judges():
        raise ConfigError(f"{user}: unknown judge {name!r}; known: {', '.join(judges())}")
    if name == "openai" and not (options.url and options.model):
        raise ConfigError(f"{user}: the judge {judge} needs --judge-url (the server's base URL) and --judge-model")
    if options.threshold is not None and (name != "llama_guard" or not 0 < options.threshold < 1):
        raise ConfigError(f"{user}: a threshold scores llama_guard's verdict token and lies in (0, 1); got "
                          f"{options.threshold} for the judge {judge}")
    if name in MODEL_JUDGES and not (options.model and Path(options.model).is_dir()):
        raise ConfigError(f"{user}: the judge {judge} needs --judge-model, its checkpoint directory (not found: "
                          f"{options.model})")


def build(judge: str, options: JudgeOptions, mesh=None, batch_size: int = 8) -> Judge:
    """The judge named `judge`, given the options its kind takes (`check` first for a clear error)."""
    name, _, rubric = judge.partition(":")
    check(judge, options, "--judge")
    if name == "openai":
        return make_judge(name, base_url=options.url, model=options.model, rubric=rubric or "harmful",
                          api_key_env=options.api_key_env, cache_dir=options.cache_dir,
                          max_concurrency=options.concurrency)
    if name == "llama_guard":
        return make_judge(name, path=options.model, dtype=options.dtype, batch_size=batch_size, mesh=mesh,
                          threshold=options.threshold)
    if name in MODEL_JUDGES:
        return make_judge(name, path=options.model, dtype=options.dtype, batch_size=batch_size, mesh=mesh)
    return make_judge(name)


def record(judges: dict[str, str | None], options: JudgeOptions) -> dict:
    """What changes the judgments, for run.json: each subset's judge and the judge model (not where it is served)."""
    model = options.model
    if model and any(j and j.partition(":")[0] in MODEL_JUDGES for j in judges.values()):
        model = str(Path(model).resolve())
    uses_model = any(j is not None and j not in REFUSAL_JUDGES for j in judges.values())
    return {"judges": judges, "judge_model": model if uses_model else None}
