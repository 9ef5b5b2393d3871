"""What every loader shares: the `Prompt` and `Benchmark` types, file reading, and per-row skips.

A malformed row is skipped with a reason and reported; it never enters a denominator.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Callable

from vlguard_jax.data.sources import DataError, Skip


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    image: str | None = None
    metadata: dict = dataclasses.field(default_factory=dict, compare=False)  # answer, choices, category, …


@dataclasses.dataclass
class Benchmark:
    """`metric`: `asr` (% not refused), `compliance` (% not refused, of safe prompts), `refusal_rate`
    (% refused; with exact answers also `accuracy`), `accuracy` (multiple choice by log-likelihood), or
    `win_rate` (pairwise against `metadata["reference"]`, by a pairwise judge), `harmless_rate` (% judged
    harmless) or `harmful_score` (% of harmful questions answered harmfully, or with a refusal judge not refused).
    `judge`: the benchmark's own judge (`evaluate.judging` decides which judge runs). `max_skipped`: the fraction
    of its rows (prompts + malformed rows) that may be skipped before an evaluation stops (`evaluate.runner`)."""

    name: str
    prompts: list[Prompt]
    metric: str
    skips: list[Skip] = dataclasses.field(default_factory=list)
    judge: str = "keywords"
    max_skipped: float = 0.01


def rows(path: Path, kind: str) -> list[Any]:
    """The records of a `csv` (dicts by header), `jsonl` or `json` file; a DataError naming the file otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        if kind == "csv":
            return list(csv.DictReader(io.StringIO(text, newline="")))  # quoted fields keep their newlines
        if kind == "jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except (json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not valid {kind} ({e})") from e


def collect(records: list, make: Callable[[int, Any], Prompt | None], name: str, metric: str) -> Benchmark:
    """A benchmark of `make(index, row)` for each row: None leaves a row out (another subset's), an error skips it."""
    benchmark = Benchmark(name, [], metric)
    for index, row in enumerate(records):
        try:
            prompt = make(index, row)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            row_id = row.get("id", index) if isinstance(row, dict) else index
            benchmark.skips.append(Skip(str(row_id), f"malformed row: {type(e).__name__}: {e}"))
            continue
        if prompt is not None:
            benchmark.prompts.append(prompt)
    return benchmark


def text(value: Any, field: str, strip: bool = True) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{field}' must be a non-empty string")
    return value.strip() if strip else value
