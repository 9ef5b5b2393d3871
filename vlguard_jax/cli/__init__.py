"""`vlguard-jax` command line: thin wrappers over the library API."""

from __future__ import annotations

import argparse
import sys

from vlguard_jax.cli.quiet import quiet_libraries

quiet_libraries()  # on import, before any library logs: here, and in the worker processes a command spawns (a
# spawned process imports the entry script, and so this package, before the code it runs)

from vlguard_jax.cli import (attack, bench, benchmarks, compare, convert, data, demo, env, evaluate,  # noqa: E402
                             export, hft, judge, plan, sweep, table1, train)

COMMANDS = (demo, hft, sweep, plan, bench, convert, train, env, export, evaluate, attack, table1, benchmarks, judge,
            compare, data)


def build_parser() -> argparse.ArgumentParser:
    """The top parser; each command's module adds its own (in `COMMANDS`' order, which `--help` lists)."""
    parser = argparse.ArgumentParser(prog="vlguard-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlguard_jax.checkpoints.tensors import CheckpointError
    from vlguard_jax.config import ConfigError
    from vlguard_jax.data.sources import DataError
    from vlguard_jax.train import TrainingError

    try:
        return args.run(args)
    except (CheckpointError, ConfigError, DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
