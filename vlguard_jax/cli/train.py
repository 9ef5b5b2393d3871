"""`vlguard-jax train`: fine-tune as a config describes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlguard_jax import storage
from vlguard_jax.cli.common import add_distributed_arguments, distributed


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="fine-tune (LoRA or full) as a config describes; re-run to resume")
    train.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
    train.add_argument("--workdir", type=storage.path, help="run directory, local or a bucket URI such as "
                                                           "gs://bucket/run (default: runs/<config name>)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=1")
    add_distributed_arguments(train)
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.config import load_config

    config = load_config(args.config, args.overrides)
    distributed(args)
    import jax

    from vlguard_jax.doctor import cpu_warning
    from vlguard_jax.train.loop import train

    warning = cpu_warning(config)
    if warning and jax.process_index() == 0:
        print(f"warning: {warning}", file=sys.stderr)

    workdir = args.workdir or Path("runs") / args.config.stem
    result = train(config, workdir)
    print(f"{result.status} at step {result.steps}/{result.total_steps}; outputs in {result.workdir}")
    if jax.process_index() == 0:
        print(result.totals.line())
    return 0
