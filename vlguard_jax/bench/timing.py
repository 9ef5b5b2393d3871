"""Alternating paired timings: each repeat times ours then theirs, so a noisy machine's drift hits both alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def seconds(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def alternate(ours: Callable[[], None], theirs: Callable[[], None] | None, repeats: int) -> tuple[float, float | None]:
    """Median seconds of each; callables must block until their work is done (warm-up excluded: run once first)."""
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(seconds(ours))
        if theirs is not None:
            theirs_s.append(seconds(theirs))
    return statistics.median(ours_s), statistics.median(theirs_s) if theirs_s else None
