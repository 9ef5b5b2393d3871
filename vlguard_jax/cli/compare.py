"""`vlguard-jax compare`: before/after table of two eval output directories."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="before/after table of two eval output directories")
    compare.add_argument("before", help="an eval --out (a local folder or gs://…)")
    compare.add_argument("after")
    compare.add_argument("--allow-different-n", action="store_true",
                         help="compare benchmarks scored over different numbers of rows (refused by default)")
    compare.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.evaluate.report import compare

    print(compare(args.before, args.after, args.allow_different_n))
    return 0
