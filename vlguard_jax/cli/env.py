"""`vlguard-jax env`: what this machine runs and how."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    from vlguard_jax.models.config import KNOWN_ARCHITECTURES

    env = commands.add_parser("env", help="backend, devices, versions, whether jaxlib matches the hardware, and each "
                                          "model part's attention here")
    env.add_argument("--config", type=Path, help="whose model to describe (default: llava-1.5-7b's shapes in "
                                                 "bfloat16)")
    env.add_argument("--architecture", help="a known shape instead of the config's model: "
                                            + ", ".join(KNOWN_ARCHITECTURES))
    env.add_argument("--json", action="store_true", help="print the report as json")
    env.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.attention=xla")
    env.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.doctor import format_report, report

    result = report(args.config, args.overrides, args.architecture)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result))
    return 0
