"""`vlguard-jax export`: a trained workdir as merged weights or a PEFT adapter."""

from __future__ import annotations

import argparse
import sys

from vlguard_jax import storage


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a trained workdir: merged llava-hf weights or a PEFT adapter")
    export.add_argument("--workdir", type=storage.path, required=True, help="the run (local or gs://…)")
    export.add_argument("--out", type=storage.path, required=True, help="the export's directory (local or gs://…)")
    export.add_argument("--format", choices=("merged", "peft"), default="merged")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.train.trained import export_workdir

    try:
        export_workdir(args.workdir, args.out, args.format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} export of {args.workdir} to {args.out}")
    return 0
