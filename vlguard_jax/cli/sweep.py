"""`vlguard-jax sweep`: post-hoc fine-tuning over amounts of safety data, optionally holding one harm category out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="post-hoc fine-tuning over amounts of safety data, each evaluated")
    sweep.add_argument("--out", default="runs/sweep", help="a folder or a bucket URI (gs://…)")
    sweep.add_argument("--overwrite", action="store_true",
                       help="recompute the runs whose recorded settings differ from these (else refused)")
    sweep.add_argument("--fractions", default="0,0.05,0.1,0.25,0.5,1", help="fractions of the safety data")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument("--scale", type=float, default=1.0, help="demo dataset size factor")
    sweep.add_argument("--config", type=Path, help="a real post-hoc config instead of the demo model")
    sweep.add_argument("--test-json", help="VLGuard test.json (with --config)")
    sweep.add_argument("--images", help="its image directory or zip (with --config)")
    sweep.add_argument("--holdout-category", metavar="CATEGORY",
                       help="train every run without this VLGuard harm category's safety data (e.g. privacy; "
                            "data.safety_exclude_categories) and report Unsafe ASR per category (the paper's Fig. 5)")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sweep.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.config import load_config
    from vlguard_jax.sweep import run_sweep

    config = None
    if args.config is not None:
        if not (args.test_json and args.images):
            print("error: a sweep over a real config needs --test-json and --images", file=sys.stderr)
            return 2
        config = load_config(args.config, args.overrides)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    run_sweep(args.out, fractions, seeds, args.scale, config, args.test_json, args.images, args.overwrite,
              args.holdout_category)
    return 0
