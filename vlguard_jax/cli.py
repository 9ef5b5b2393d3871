"""`vlguard-jax` command line: thin wrappers over the library API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def _convert(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from vlguard_jax.checkpoints.hf import load_pretrained, save_pretrained
    from vlguard_jax.checkpoints.tokenizer import convert_tokenizer

    dtype = jnp.dtype(args.dtype)
    model = load_pretrained(args.source, dtype=dtype, vision_tower=args.vision_tower)
    out = save_pretrained(model, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote llava-hf weights and config.json to {out}")
    print(convert_tokenizer(args.source, out, model.config))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.data.check import check_dataset, write_report

    tokenizer = None
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlguard-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint (original LLaVA + CLIP, or any llava-hf layout) to llava-hf layout")
    convert.add_argument("source", type=Path, help="checkpoint directory (config.json + weights)")
    convert.add_argument("out", type=Path, help="output directory")
    convert.add_argument("--vision-tower", type=Path, help="CLIP checkpoint directory (original LLaVA only)")
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    convert.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GiB")
    convert.set_defaults(run=_convert)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a dataset and report counts, skips and token lengths")
    check.add_argument("--format", choices=("vlguard", "llava", "alpaca"), required=True)
    check.add_argument("--json", type=Path, required=True, help="the dataset's json file")
    check.add_argument("--images", type=Path, help="image root: a directory or a .zip archive")
    check.add_argument("--tokenizer", type=Path, help="tokenizer directory, for token-length statistics")
    check.add_argument("--template", default="vicuna_v1", choices=("vicuna_v1", "llava_v1", "llama2", "tokenizer"))
    check.add_argument("--max-length", type=int, default=2048)
    check.add_argument("--num-image-tokens", type=int, default=576)
    check.add_argument("--out", type=Path, help="write the full report (every skip) as json here")
    check.set_defaults(run=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlguard_jax.checkpoints.tensors import CheckpointError
    from vlguard_jax.data.sources import DataError

    try:
        return args.run(args)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
