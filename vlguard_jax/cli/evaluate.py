"""`vlguard-jax eval`: safety/helpfulness benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlguard_jax import storage
from vlguard_jax.cli.common import (DTYPES, add_distributed_arguments, add_judge_arguments, distributed,
                                    judge_options)
from vlguard_jax.data.chat import TEMPLATES
from vlguard_jax.data.images import MODES as IMAGE_MODES

PROTOCOL_FLAGS = ("template", "image_mode", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed", "judge")


def register(commands: argparse._SubParsersAction) -> None:
    from vlguard_jax.evaluate.benchmarks import REGISTRY

    evaluate = commands.add_parser("eval", help="run safety/helpfulness benchmarks; re-run to resume")
    evaluate.add_argument("--model", type=storage.path,
                          help="checkpoint directory or training workdir, local or gs://… (needed but for --dry-run)")
    evaluate.add_argument("--benchmark", required=True,
                          help="comma-separated: " + ", ".join(REGISTRY) + " (`vlguard-jax benchmarks` lists "
                               "what each reads)")
    evaluate.add_argument("--data", type=Path, action="append", required=True,
                          help="one --data per benchmark, in --benchmark's order; a benchmark that reads two files "
                               "takes them comma-separated (jailbreak_llms: FORBIDDEN.csv[,PROMPTS.csv]); mmlu "
                               "takes its directory")
    evaluate.add_argument("--sample", type=int, default=5,
                          help="jailbreak_llms: jailbreak prompts drawn from the prompts file (each asks every "
                               "question)")
    evaluate.add_argument("--sample-seed", type=int, default=0, help="the draw's seed: the same seed, the same prompts")
    evaluate.add_argument("--dry-run", action="store_true",
                          help="print each subset's prompt and skipped-row counts as json; load no model")
    evaluate.add_argument("--images", type=Path, help="image directory or zip (vlguard, figstep, …)")
    evaluate.add_argument("--image-override", type=storage.path, metavar="IMAGE",
                          help="an image file, local or gs://… (e.g. an adversarial PNG) shown with every prompt of "
                               "every benchmark, "
                               "in place of its own image and beside text-only prompts (rtp_continuation's); it "
                               "wins over --images; run.json records its path and sha256")
    evaluate.add_argument("--out", help="results directory, a local folder or gs://… (needed but for --dry-run); "
                                         "process 0 alone reads and writes it")
    evaluate.add_argument("--protocol", default="vlguard",
                          choices=("vlguard", "vlguard_minigptv2", "llava", "harmful_finetune", "llava_next",
                                   "llava_next_mistral", "onevision"),
                          help="evaluation preset, recorded in run.json and summary.json: vlguard (VLGuard's "
                               "VLGuard_eval.py: llava_v1, CLIP resize + centre crop, greedy, 1 to 256 new tokens), "
                               "vlguard_minigptv2 (the same for MiniGPT-v2: its [vqa] prompt, 448-px resize), "
                               "llava (LLaVA-1.5's eval: vicuna_v1, pad to square, greedy, 128 new tokens), "
                               "llava_next / llava_next_mistral / onevision (VLGuard's settings in LLaVA-NeXT "
                               "Vicuna's llava_v1, NeXT Mistral's mistral_instruct or OneVision's qwen prompt; "
                               "images tiled at any resolution); the flags below, where given, replace its fields")
    evaluate.add_argument("--template", choices=TEMPLATES)
    evaluate.add_argument("--image-mode", choices=IMAGE_MODES)
    evaluate.add_argument("--max-new-tokens", type=int)
    evaluate.add_argument("--min-new-tokens", type=int, help="no stop token before this many new tokens")
    evaluate.add_argument("--temperature", type=float, help="0: greedy")
    evaluate.add_argument("--top-p", type=float)
    evaluate.add_argument("--seed", type=int)
    evaluate.add_argument("--judge", help="NAME[:RUBRIC], the judge of every benchmark whose metric it decides "
                                           "(default: the protocol's keywords, or a benchmark's own judge; "
                                           "`vlguard-jax benchmarks` lists them): keywords, keywords_normalized, "
                                           "openai[:RUBRIC], llama_guard, beaver_dam")
    add_judge_arguments(evaluate, "default OUT/judge_cache")
    evaluate.add_argument("--batch-size", type=slots, default="auto", metavar="N|auto",
                          help="the engine's slots (prompts decoded together; a multiple of the mesh's data × fsdp). "
                               "auto: as many as the devices' memory holds for the benchmarks' longest prompt and "
                               "the new tokens, up to 256 (compiled ahead of time to measure); on devices that "
                               "report no memory (CPU), or beside a model judge, 8")
    evaluate.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                          help="compute dtype and that of the frozen weights (logits and sampling stay fp32)")
    evaluate.add_argument("--mesh", help="e.g. data=2,fsdp=4,tensor=1 (default: fsdp over as many devices as the batch "
                                         "size divides over, tensor over the rest)")
    evaluate.add_argument("--max-skipped", type=fraction, metavar="FRACTION",
                          help="skipped rows (malformed, or an image that does not load; BENCHMARK/skips.jsonl) "
                               "allowed per benchmark, a fraction of its rows, past which the evaluation stops "
                               "(default: each benchmark's own, 0.01)")
    add_distributed_arguments(evaluate)
    evaluate.add_argument("--overwrite", action="store_true",
                          help="clear --out's earlier results (needed when they were made with other settings)")
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.evaluate import benchmarks

    names = args.benchmark.split(",")
    if len(args.data) != len(names):
        print(f"error: give one --data per benchmark ({len(names)} benchmarks, {len(args.data)} --data)",
              file=sys.stderr)
        return 2
    from vlguard_jax.evaluate import judging
    from vlguard_jax.evaluate.protocols import protocol

    suite = [b for name, data in zip(names, args.data)
             for b in benchmarks.load(name, data, args.sample, args.sample_seed)]
    chosen = protocol(args.protocol, **{name: getattr(args, name) for name in PROTOCOL_FLAGS})
    assigned = {b.name: judging.assign(b, chosen) for b in suite}
    if args.dry_run:  # counts only: no model, no tokenizer
        print(json.dumps({b.name: {"prompts": len(b.prompts), "skipped": len(b.skips),
                                   "categories": len({p.metadata.get("category") for p in b.prompts} - {None}),
                                   "judge": assigned[b.name]} for b in suite}, indent=1))
        return 0
    if args.model is None or args.out is None:
        print("error: eval needs --model and --out (all but a --dry-run)", file=sys.stderr)
        return 2
    out = storage.path(args.out)
    options = judge_options(args, out / "judge_cache")
    for subset, judge in assigned.items():
        if judge is not None:
            judging.check(judge, options, subset)  # before the model loads
    distributed(args)
    import jax

    from vlguard_jax.evaluate.checkpoint_eval import evaluate_checkpoint

    labels = [benchmarks.spec(name).label(args.sample, args.sample_seed) for name in names]
    files = [path for data in args.data for path in benchmarks.paths(data)]
    summary = evaluate_checkpoint(args.model, suite, labels, files, out, chosen, options, images=args.images,
                                  image_override=args.image_override, dtype=args.dtype, batch_size=args.batch_size,
                                  mesh=args.mesh, max_skipped=args.max_skipped, overwrite=args.overwrite)
    if jax.process_index() == 0:
        print((out / "report.md").read_text())
    return 0 if summary["benchmarks"] else 1


def fraction(value: str) -> float:
    """`--max-skipped`: a fraction in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction between 0 and 1")
    return number


def slots(value: str) -> int | None:
    """`--batch-size`: a positive count, or `auto` (None)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a positive count nor 'auto'")
    return int(value)
