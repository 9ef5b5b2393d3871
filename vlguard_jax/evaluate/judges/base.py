"""The judge interface and registry: a judge reads a batch of items and returns one `Judgment` per item, in order.

Judging takes a batch so that model and HTTP judges can batch or run requests concurrently; a new judge is one
module whose factory is decorated with `@register(name)` and imported by the package `__init__`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Protocol, Sequence


class JudgeError(ValueError):
    """An unknown judge, options it does not take, or a judgment that could not be obtained."""


@dataclasses.dataclass(frozen=True)
class Item:
    prompt: str
    response: str
    image: str | None = None  # the image's path as the benchmark names it
    reference: str | None = None  # a reference answer, for judges that compare against one
    category: str | None = None  # the benchmark's category of the prompt (e.g. MM-SafetyBench's scenario)


@dataclasses.dataclass(frozen=True)
class Judgment:
    label: str  # e.g. "refusal", "safe", "unsafe", "win", "tie", "lose", "unparseable"
    refused: bool | None = None  # None: this judge does not decide refusal
    unsafe: bool | None = None  # None: not decided (or the judge's output could not be read)
    score: float | None = None  # pairwise judges: 1 win, 0.5 tie, 0 lose (the response against the reference)
    raw: str = ""  # the judge's own output
    tokens: tuple[int, int] | None = None  # a model judge's (prompt, completion) tokens; cached replies count too
    probability: float | None = None  # a judge scoring by its verdict token: P(unsafe) against P(safe)


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[Item]) -> list[Judgment]:
        """One judgment per item, in the items' order."""

    def counters(self) -> dict[str, int]:
        """Work done so far (requests, cache hits, tokens, ...); empty for judges that do no such work."""


_FACTORIES: dict[str, Callable[..., Judge]] = {}


def register(name: str) -> Callable:
    """Decorator: `make_judge(name, **options)` calls the decorated factory (a class or function) with `options`."""
    def add(factory):
        if name in _FACTORIES:
            raise JudgeError(f"judge {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory
    return add


def judges() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def make_judge(name: str, **options) -> Judge:
    if name not in _FACTORIES:
        raise JudgeError(f"unknown judge {name!r}; known: {', '.join(_FACTORIES)}")
    factory = _FACTORIES[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise JudgeError(f"judge {name!r}: {e}") from None
    return factory(**options)
