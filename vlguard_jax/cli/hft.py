"""`vlguard-jax hft`: the harmful fine-tuning grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlguard_jax.cli.common import add_distributed_arguments, distributed


def register(commands: argparse._SubParsersAction) -> None:
    hft = commands.add_parser("hft", help="harmful fine-tuning grid: poison ratios × defences, each a LoRA fine-tune "
                                          "scored for harmful score and fine-tune accuracy; re-run to resume")
    hft.add_argument("--config", type=Path, required=True, help="e.g. configs/hft_llama2_7b_chat_sst2.yaml")
    hft.add_argument("--out", required=True, help="a folder or a bucket URI (gs://…)")
    hft.add_argument("--overwrite", action="store_true",
                     help="recompute the cells whose recorded settings differ from the config (else refused)")
    hft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    add_distributed_arguments(hft)
    hft.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.config import load_config
    from vlguard_jax.hft import grid, results

    config = load_config(args.config, args.overrides)
    distributed(args)
    import jax

    rows = grid.run_grid(config, args.out, overwrite=args.overwrite)
    if jax.process_index() == 0:
        print(results.write(args.out, rows, grid.settings(config)))
    return 0
