"""Length buckets: a batch is padded up to one of a few lengths, so few shapes ever compile (training batches,
prompts, a score-head judge's inputs)."""

from __future__ import annotations

from typing import Sequence

from vlguard_jax.data.sources import DataError


def bucket(length: int, buckets: Sequence[int], what: str = "a prompt") -> int:
    """The smallest of `buckets` that holds `length` tokens; `what` (the thing bucketed) names it in the error."""
    for size in sorted(buckets):
        if length <= size:
            return size
    raise DataError(f"{what} of {length} tokens exceeds the largest bucket {max(buckets)}")


def powers_of_two(smallest: int, largest: int) -> tuple[int, ...]:
    """`smallest`, twice that, and so on up to the first that holds `largest`."""
    sizes = [smallest]
    while sizes[-1] < largest:
        sizes.append(2 * sizes[-1])
    return tuple(sizes)
