"""`vlguard-jax benchmarks`: the benchmarks eval knows."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("benchmarks", help="the benchmarks eval knows: what --data they read, judge, metric")
    listing.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.evaluate.benchmarks import REGISTRY

    table = [("name", "--data", "judge", "metric")] + [(s.name, s.files, s.judge, s.metric) for s in REGISTRY.values()]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0
