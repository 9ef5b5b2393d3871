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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlguard_jax.checkpoints.tensors import CheckpointError

    try:
        return args.run(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
