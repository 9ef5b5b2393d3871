"""`vlguard-jax bench`: throughput beside transformers + PEFT."""

from __future__ import annotations

import argparse

from vlguard_jax import storage


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="train-step, decode and pipeline throughput beside transformers + PEFT")
    bench.add_argument("--sizes", nargs="+", default=["tiny", "small"],
                       choices=["tiny", "small", "7b", "13b", "minigpt_tiny", "minigpt_small", "minigpt-v2"])
    bench.add_argument("--out", type=storage.path, help="write the results as json (rewritten after every measurement)")
    bench.add_argument("--repeats", type=int, default=3, help="timed pairs per figure (medians are reported)")
    bench.add_argument("--decode-batch", type=int, nargs="+", default=[1, 32])
    bench.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline measurement")
    bench.add_argument("--no-eval-workload", action="store_true",
                       help="skip the evaluation workload (continuous vs static engine vs transformers generate, and "
                            "4 LoRA adapters in one pass vs 4 sequential passes; tiny and small sizes)")
    bench.add_argument("--no-attack", action="store_true",
                       help="skip the attack's PGD step beside Qi et al.'s PyTorch step (tiny and small sizes)")
    bench.add_argument("--eval-prompts", type=int, help="prompts of the evaluation workload (default: bench.run's "
                                                         "EVAL_PROMPTS)")
    bench.add_argument("--eval-slots", type=int,
                       help="the continuous engine's slots and the static engines' batch size; each adapter's slots "
                            "in the multi-adapter run (default: EVAL_SLOTS)")
    bench.add_argument("--eval-adapter-prompts", type=int,
                       help="prompts each of the 4 adapters evaluates in the multi-adapter run (default: "
                            "EVAL_ADAPTER_PROMPTS)")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.bench.run import run

    sizes = {k: getattr(args, k) for k in ("eval_prompts", "eval_slots", "eval_adapter_prompts")
             if getattr(args, k) is not None}  # unset: run's defaults
    run(args.sizes, args.out, args.repeats, tuple(args.decode_batch), pipeline=not args.no_pipeline,
        eval_workload=not args.no_eval_workload, attack=not args.no_attack, **sizes)
    return 0
