"""The SPMD partitioner's "Involuntary full rematerialization" warnings of one compile.

XLA logs them (to the process's stderr, from C++) when it cannot move a tensor from one sharding to another
except by replicating it whole and slicing again: an all-gather of the whole tensor each step, cheap on 8 virtual
CPUs and ruinous at pod scale. `plan` compiles under `captured_reshards` and reports them, so a sharding bug shows
on this machine before it costs a slice's hours. A compile served from JAX's persistent cache runs no
partitioner and logs nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

MARKER = "Involuntary full rematerialization"
_SUMMARY = re.compile(r"cannot go from sharding (\{.*?\}) to (\{.*?\}) efficiently for HLO operation (%[\w.-]+ = "
                      r"\S+)")


@contextlib.contextmanager
def captured_reshards() -> Iterator[list[str]]:
    """Yields a list that, on exit, holds one summary per warning logged inside the block (`from → to: op`);
    everything else the block wrote to stderr is passed on."""
    found: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield found
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            _sort(log.read().decode(errors="replace"), found)


def _sort(text: str, found: list[str]) -> None:
    for line in text.splitlines():
        if MARKER in line:
            match = _SUMMARY.search(line)
            found.append(f"{match[1]} → {match[2]}: {match[3]}" if match else line.strip())
        elif line.strip():
            print(line, file=sys.stderr)
