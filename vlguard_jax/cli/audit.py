"""`vlguard-jax data audit`: judge every exchange of an instruction file with a moderation model."""

from __future__ import annotations

import argparse

from vlguard_jax.cli.common import DTYPES, add_distributed_arguments, add_judge_arguments, distributed


def register(data: argparse._SubParsersAction) -> None:
    audit = data.add_parser("audit", help="judge every (user, assistant) exchange of an instruction file with a "
                                          "moderation judge; writes flagged.jsonl, clean.json (the input minus the "
                                          "flagged conversations), report.md/png and audit.json, resumably")
    audit.add_argument("--format", choices=("llava", "vlguard", "alpaca"), required=True)
    audit.add_argument("--json", required=True, help="the instruction file (e.g. llava_v1_5_mix665k.json); its images "
                                                     "are not read: the moderators are text-only")
    audit.add_argument("--out", required=True, help="output directory: a local folder or gs://…")
    audit.add_argument("--judge", default="llama_guard",
                       help="llama_guard (a local Llama Guard checkpoint: --judge-model DIR), beaver_dam, or openai "
                            "(an OpenAI-compatible server asked Llama Guard's question: --judge-url, --judge-model)")
    audit.add_argument("--threshold", type=float,
                       help="llama_guard: flag by P(unsafe) ≥ THRESHOLD from one prefill a row (decoding only the "
                            "flagged rows, for their categories); default: generate each verdict (greedy)")
    audit.add_argument("--batch-size", type=int, default=8, help="rows a model judge runs at once (a multiple of "
                                                                 "the mesh's data × fsdp)")
    audit.add_argument("--chunk", type=int, default=512, help="conversations between two progress writes")
    audit.add_argument("--max-unparseable", type=float, default=0.01,
                       help="stop once more than this fraction of the exchanges got an unreadable verdict")
    audit.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="model judges' weights and compute")
    audit.add_argument("--mesh", help="model judges: e.g. data=2,fsdp=4 (default: fsdp over the devices the batch "
                                      "divides over)")
    audit.add_argument("--overwrite", action="store_true", help="start over, discarding the audit in --out")
    audit.add_argument("--count-tokens", action="store_true",
                       help="llama_guard: only count the exchanges and their prompt tokens with the judge's "
                            "tokenizer and chat template (no weights loaded; --judge-model may hold only the "
                            "tokenizer), print them and stop")
    add_judge_arguments(audit, "default OUT/judge_cache")
    add_distributed_arguments(audit)
    audit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from vlguard_jax.audit import AuditConfig, run_audit
    from vlguard_jax.cli.common import judge_options
    from vlguard_jax.config import ConfigError
    from vlguard_jax.evaluate.judging import MODEL_JUDGES

    if args.count_tokens:
        from vlguard_jax.audit.count import count_tokens

        if args.judge != "llama_guard" or not args.judge_model:
            raise ConfigError("--count-tokens counts a llama_guard judge's prompts: --judge llama_guard --judge-model "
                              "DIR (its tokenizer)")
        print(json.dumps(count_tokens(args.json, args.format, args.judge_model)))
        return 0
    distributed(args)
    options = dataclasses.replace(judge_options(args, None), threshold=args.threshold)
    mesh = None
    if args.judge.partition(":")[0] in MODEL_JUDGES:
        from vlguard_jax.evaluate.runner import eval_mesh

        mesh = eval_mesh(args.mesh, args.batch_size)
    config = AuditConfig(args.batch_size, args.chunk, args.max_unparseable)
    summary = run_audit(args.json, args.format, args.out, args.judge, options, config=config, mesh=mesh,
                        overwrite=args.overwrite)
    if summary is not None:
        counts = {k: summary[k] for k in ("conversations", "flagged_conversations", "exchanges", "flagged_exchanges",
                                          "unparseable", "skipped_records")}
        print(json.dumps({**counts, "throughput": summary["throughput"]}))
    return 0
