"""Arguments and start-up shared by several `vlguard-jax` commands."""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "float16")


def distributed(args: argparse.Namespace) -> None:
    """Multi-host start-up: explicit coordinator flags, or `--distributed` for auto-detection (TPU pods, SLURM)."""
    import jax

    if args.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distributed", action="store_true", help="multi-host: auto-detect (TPU pod, SLURM)")
    parser.add_argument("--coordinator", help="multi-host: coordinator address HOST:PORT")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument("--cpu-collectives", choices=("gloo", "mpi"), help="collectives for multi-process CPU runs")


def add_judge_arguments(parser: argparse.ArgumentParser, cache: str) -> None:
    parser.add_argument("--judge-url", help="openai: the server's base URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--judge-model", help="openai: the judge model's name; llama_guard, beaver_dam: its "
                                              "checkpoint directory")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                        help="openai: the environment variable holding the API key (unset: no key sent)")
    parser.add_argument("--judge-cache", help=f"openai: directory of cached replies (a local folder or gs://…), so a "
                                              f"re-run sends no request twice ({cache})")
    parser.add_argument("--judge-concurrency", type=int, default=8, help="openai: requests in flight at once")


def judge_options(args: argparse.Namespace, cache):
    """The judge flags as `JudgeOptions`; `cache`: the command's default cache directory (a `storage` path)."""
    from vlguard_jax.evaluate.judging import JudgeOptions

    return JudgeOptions(args.judge_url, args.judge_model, args.judge_api_key_env, args.judge_cache or cache,
                        args.judge_concurrency, getattr(args, "dtype", "bfloat16"))
