"""Benchmarks by name: each with its loader, the file(s) `--data` gives it, its default judge and its metric.

One `--data` per benchmark; a benchmark that reads two files takes them comma-separated (`FORBIDDEN.csv,PROMPTS.csv`),
and `--dry-run` and `vlguard-jax benchmarks` read what they print from here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from vlguard_jax.data.sources import DataError


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    loader: Callable  # (path, [second path], [sample=, seed=]) -> list[Benchmark]
    files: str  # what --data takes, for the listing and errors
    judge: str  # default judge name
    metric: str  # of its subsets, as listed
    max_files: int = 1
    sampled: bool = False  # takes `sample` and `seed`
    max_skipped: float = 0.01  # of its subsets' rows (`Benchmark.max_skipped`)

    def label(self, sample: int, seed: int) -> str:
        """The name with the options that change its prompts (what a run's fingerprint records)."""
        return f"{self.name}[sample={sample},seed={seed}]" if self.sampled else self.name


REGISTRY: dict[str, Spec] = {}


def register(name: str, files: str, judge: str, metric: str, max_files: int = 1, sampled: bool = False,
             max_skipped: float = 0.01):
    def add(loader: Callable) -> Callable:
        REGISTRY[name] = Spec(name, loader, files, judge, metric, max_files, sampled, max_skipped)
        return loader
    return add


def spec(name: str) -> Spec:
    if name not in REGISTRY:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def paths(data: str | os.PathLike) -> list[Path]:
    """The files of one `--data` value: comma-separated."""
    return [Path(part) for part in str(data).split(",")]


def load(name: str, data: str | os.PathLike, sample: int = 5, seed: int = 0) -> list:
    """The subsets (`Benchmark`s) of benchmark `name` read from `data`; `sample`, `seed`: of sampled benchmarks."""
    entry = spec(name)
    files = paths(data)
    if len(files) > entry.max_files:
        raise DataError(f"benchmark {name} reads {entry.files}; got {len(files)} comma-separated files in {data}")
    options = {"sample": sample, "seed": seed} if entry.sampled else {}
    subsets = entry.loader(*files, **options)
    for subset in subsets:
        subset.judge, subset.max_skipped = entry.judge, entry.max_skipped
    return subsets

