"""`vlguard-jax table1`: VLGuard's Table 1, base LLMs beside the VLLMs tuned from them on text-only benchmarks."""

from __future__ import annotations

import argparse

from vlguard_jax.cli.common import (DTYPES, add_distributed_arguments, add_judge_arguments, distributed,
                                    judge_options)
from vlguard_jax.cli.evaluate import slots


def register(commands: argparse._SubParsersAction) -> None:
    from vlguard_jax.evaluate.forgetting import BENCHMARK_FILES

    table = commands.add_parser("table1", help="VLGuard Table 1: LLMs beside VLLMs on text-only safety and "
                                               "helpfulness; re-run to resume")
    for kind, what in (("llm", "a text-only LLaMA checkpoint directory, e.g. Vicuna-7B-v1.5 (its protocol: "
                                "vlguard with the Vicuna system prompt, template vicuna_v1)"),
                       ("vllm", "a llava-hf checkpoint directory or a training workdir, e.g. LLaVA-1.5-7B (its "
                                "protocol: VLGuard's for its family, vlguard for LLaVA)")):
        table.add_argument(f"--{kind}", action="append", default=[], type=named, metavar="NAME=DIR",
                           help=f"repeatable: {what}; NAME is its row (the --llm rows first, in order) and its "
                                f"folder OUT/NAME")
    table.add_argument("--data", action="append", required=True, metavar="ROOT|BENCHMARK=PATH",
                       help="a benchmarks root laid out as ../shared/benchmarks (" +
                            ", ".join(BENCHMARK_FILES.values()) + "), and/or one benchmark's file, e.g. "
                            "--data mmlu=DIR (replacing the root's)")
    table.add_argument("--benchmarks", default=",".join(BENCHMARK_FILES),
                       help="comma-separated, of " + ", ".join(BENCHMARK_FILES) + " (default all; a column left "
                            "out is n/a); alpaca_eval needs its pairwise judge: --judge-url and --judge-model")
    table.add_argument("--out", required=True, help="results directory: OUT/NAME per model (an `eval` directory), "
                                                    "OUT/table1.json and OUT/table1.md")
    table.add_argument("--max-new-tokens", type=int, help="replaces the protocols' 256 in every row (recorded)")
    add_judge_arguments(table, "default OUT/judge_cache")
    table.add_argument("--batch-size", type=slots, default="auto", metavar="N|auto", help="as eval's")
    table.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="as eval's")
    table.add_argument("--mesh", help="as eval's")
    add_distributed_arguments(table)
    table.add_argument("--overwrite", action="store_true", help="clear each OUT/NAME's earlier results")
    table.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax import storage
    from vlguard_jax.config import ConfigError
    from vlguard_jax.evaluate.forgetting import Model, benchmark_files, forgetting_table
    from vlguard_jax.evaluate.forgetting_report import markdown

    roots = [value for value in args.data if "=" not in value]
    if len(roots) > 1:
        raise ConfigError(f"--data: one benchmarks root at most, got {', '.join(roots)}")
    files = benchmark_files(roots[0] if roots else None, dict(v.split("=", 1) for v in args.data if "=" in v),
                            args.benchmarks.split(","))
    models = [Model(name, path, kind) for kind in ("llm", "vllm") for name, path in getattr(args, kind)]
    out = storage.path(args.out)
    distributed(args)
    import jax

    table = forgetting_table(models, files, out, judge_options(args, out / "judge_cache"), dtype=args.dtype,
                             batch_size=args.batch_size, mesh=args.mesh, max_new_tokens=args.max_new_tokens,
                             overwrite=args.overwrite)
    if jax.process_index() == 0:
        print(markdown(table))
    return 0


def named(value: str) -> tuple[str, str]:
    """`NAME=PATH`."""
    name, sep, path = value.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=PATH")
    return name, path
