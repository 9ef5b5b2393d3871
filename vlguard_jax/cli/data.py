"""`vlguard-jax data check`: validate a dataset (and `data audit`, in `cli.audit`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlguard_jax.cli import audit
from vlguard_jax.config import ConfigError, DataConfig, TrainConfig
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
    check.add_argument("--num-image-tokens", type=int,
                       help="image tokens per image without --model (default 576, LLaVA-1.5's)")
    check.add_argument("--model", help="the model whose image tokens count: a known architecture (llava-1.5-7b, "
                                       "llava-onevision-qwen2-7b-ov, …), a checkpoint directory or its config.json; "
                                       "an any-resolution model's counts follow each image's size (needs --images)")
    check.add_argument("--buckets", type=_lengths, default=DataConfig.buckets,
                       help="the run's data.buckets, comma-separated (default %(default)s)")
    check.add_argument("--global-batch-size", type=int, default=TrainConfig.global_batch_size,
                       help="the run's train.global_batch_size (default %(default)s)")
    check.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="the run's train.epochs (default "
                                                                               "%(default)s)")
    check.add_argument("--seed", type=int, default=DataConfig.seed, help="the run's data.seed (shuffle order)")
    check.add_argument("--out", type=Path, help="write the full report (every skip) as json here")
    check.set_defaults(run=run)
    audit.register(data)


def _lengths(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


def model_config(spec: str):
    """A known architecture by name, else the `LlavaConfig` of a checkpoint directory's config.json (or the file)."""
    import json

    from vlguard_jax.models.config import KNOWN_ARCHITECTURES, LlavaConfig

    if spec in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[spec]
    path = Path(spec)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"--model {spec}: neither a known architecture ({', '.join(KNOWN_ARCHITECTURES)}) nor a "
                          f"checkpoint directory or config.json")
    try:
        return LlavaConfig.from_hf(json.loads(path.read_text()))
    except ValueError as e:
        raise ConfigError(f"--model {path}: {e}") from None


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
    if args.model is not None and args.num_image_tokens is not None:
        raise ConfigError("--num-image-tokens and --model both say how many tokens an image has: give one")
    model = None if args.model is None else model_config(args.model)
    if model is not None and model.anyres and args.images is None:
        raise ConfigError(f"--model {args.model}: an any-resolution model's image tokens follow each image's size: "
                          f"give --images")
    report = check_dataset(args.format, args.json, images=args.images, tokenizer=tokenizer, template=args.template,
                           max_length=args.max_length, num_image_tokens=args.num_image_tokens or 576, model=model,
                           buckets=args.buckets, global_batch_size=args.global_batch_size, epochs=args.epochs,
                           seed=args.seed)
    summary = {k: v for k, v in report.items() if k != "skips"}
    print(json.dumps(summary, indent=1))
    shapes = report.get("train_step_shapes")
    if shapes is not None:
        print(f"train-step shapes: {shapes['count']} (exactly, for a run on these {shapes['samples']} samples in "
              f"file order: {shapes['epochs']} epoch(s), seed {shapes['seed']}, global batch "
              f"{shapes['global_batch_size']}); at most {shapes['upper_bound']} for any run drawn from them (their "
              f"distinct buckets of {', '.join(map(str, shapes['buckets']))})")
    for skip in report["skips"][:20]:
        print(f"skipped {skip['id']}: {skip['reason']}")
    if report["skipped"] > 20:
        print(f"… and {report['skipped'] - 20} more skips (all listed in the report file)")
    if args.out is not None:
        write_report(report, args.out)
        print(f"report written to {args.out}")
    return 0
