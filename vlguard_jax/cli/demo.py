"""`vlguard-jax demo`: the whole method (or the harmful-fine-tuning protocol, the data audit, or DPO) on a tiny
model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the whole method on a tiny model in minutes, on a CPU")
    demo.add_argument("--out", type=Path, help="default runs/demo (runs/demo_hft with --hft, runs/demo_audit with "
                                               "--audit, runs/demo_dpo with --dpo, runs/demo_attack with --attack)")
    variant = demo.add_mutually_exclusive_group()
    variant.add_argument("--hft", action="store_true",
                         help="the harmful-fine-tuning protocol instead: HS and FA over poison ratios, with and "
                              "without the vlguard defence, on a tiny text-only model")
    variant.add_argument("--audit", action="store_true",
                         help="VLGuard's data audit instead: a tiny Llama Guard trained here flags the harmful "
                              "conversations of the instruction data; an aligned tiny LLaVA tuned on the data and "
                              "on its clean part, compared for ASR")
    variant.add_argument("--dpo", action="store_true",
                         help="safety by DPO instead: the instruction-tuned tiny LLaVA trained with LoRA on preference "
                              "pairs (refusals over compliance, right answers over wrong ones), compared with "
                              "post-hoc SFT")
    variant.add_argument("--attack", action="store_true",
                         help="white-box visual jailbreaks instead: PGD attacks on the instruction-tuned and the "
                              "VLGuard-tuned tiny LLaVA at two budgets and unconstrained, ASR with each adversarial "
                              "image, and whether an attack on the base transfers")
    demo.add_argument("--scale", type=float, default=1.0, help="dataset size factor (smaller: quicker check)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.hft:
        from vlguard_jax.hft.demo import run_hft_demo as run_protocol
    elif args.audit:
        from vlguard_jax.audit.demo import run_audit_demo as run_protocol
    elif args.dpo:
        from vlguard_jax.dpo_demo import run_dpo_demo as run_protocol
    elif args.attack:
        from vlguard_jax.attack.demo import run_attack_demo as run_protocol
    else:
        from vlguard_jax.demo import run_demo as run_protocol
    out = args.out or Path("runs/demo_hft" if args.hft else "runs/demo_audit" if args.audit
                           else "runs/demo_dpo" if args.dpo else "runs/demo_attack" if args.attack else "runs/demo")
    run_protocol(out, args.scale)
    print(f"summary, chart and every stage's outputs in {out}")
    return 0
