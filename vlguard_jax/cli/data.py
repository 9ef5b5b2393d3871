"""`vlguard-jax data check`: validate a dataset (and `data audit`, in `cli.audit`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlguard_jax.cli import audit
from vlguard_jax.data.chat import TEMPLATES
from vlguard_jax.data.preference import PREFERENCE_READERS


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a dataset and report counts, skips and token lengths")
    check.add_argument("--format", choices=("vlguard", "llava", "alpaca", *PREFERENCE_READERS), required=True,
                       help="a preference format is checked one side at a time (`jsonl:rejected`: the rejected "
                            "answers, with the prompts they share)")
    check.add_argument("--json", type=Path, required=True,
                       help="the dataset's json file (spavl: its parquet file or folder)")
    check.add_argument("--images", type=Path, help="image root: a directory or a .zip archive")
    check.add_argument("--tokenizer", type=Path, help="tokenizer directory, for token-length statistics")
    check.add_argument("--template", default="vicuna_v1", choices=TEMPLATES)
    check.add_argument("--max-length", type=int, default=2048)
    check.add_argument("--num-image-tokens", type=int, default=576)
    check.add_argument("--out", type=Path, help="write the full report (every skip) as json here")
    check.set_defaults(run=run)
    audit.register(data)


def run(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.data.check import check_dataset, write_report

    tokenizer = None
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        from vlguard_jax.checkpoints.tokenizer import add_special
        from vlguard_jax.data.sources import IMAGE_PLACEHOLDER

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        add_special(tokenizer, IMAGE_PLACEHOLDER)  # a Vicuna tokenizer has none; a run adds it the same way
    report = check_dataset(args.format, args.json, images=args.images, tokenizer=tokenizer, template=args.template,
                           max_length=args.max_length, num_image_tokens=args.num_image_tokens)
    summary = {k: v for k, v in report.items() if k != "skips"}
    print(json.dumps(summary, indent=1))
    for skip in report["skips"][:20]:
        print(f"skipped {skip['id']}: {skip['reason']}")
    if report["skipped"] > 20:
        print(f"… and {report['skipped'] - 20} more skips (all listed in the report file)")
    if args.out is not None:
        write_report(report, args.out)
        print(f"report written to {args.out}")
    return 0
