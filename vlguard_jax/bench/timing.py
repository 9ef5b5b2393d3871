"""Alternating paired timings: each repeat times ours then theirs, so a noisy machine's drift hits both alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def seconds(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def alternate_all(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each run: each repeat times every run once, in turn (warm-up excluded: run each once
    first; callables must block until their work is done)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return {name: statistics.median(t) for name, t in times.items()}


def alternate(ours: Callable[[], None], theirs: Callable[[], None] | None, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ours and of theirs (None without theirs)."""
    medians = alternate_all({"ours": ours} if theirs is None else {"ours": ours, "theirs": theirs}, repeats)
    return medians["ours"], medians.get("theirs")
