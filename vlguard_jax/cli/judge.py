"""`vlguard-jax judge`: judge responses made anywhere."""

from __future__ import annotations

import argparse
import sys

from vlguard_jax.cli.common import DTYPES, add_judge_arguments, judge_options

CACHE_SUFFIX = ".judge_cache"  # a network judge's replies, beside --out: judging the same lines again sends nothing


def register(commands: argparse._SubParsersAction) -> None:
    judge = commands.add_parser("judge", help="judge responses made anywhere: jsonl lines with id, prompt and "
                                              "response; adds refusal (keyword judges), unsafe, judge_label, "
                                              "judge_raw")
    judge.add_argument("--in", dest="input", required=True, help="jsonl: a local file or gs://…")
    judge.add_argument("--out", dest="output", required=True, help="jsonl: a local file or gs://…")
    judge.add_argument("--judge", default="keywords",
                       help="keywords (VLGuard's rule), keywords_normalized, openai (an OpenAI-compatible "
                            "chat-completions judge model), llama_guard (a local Llama Guard checkpoint run by this "
                            "package) or beaver_dam (a local score-head moderation checkpoint)")
    judge.add_argument("--rubric", help="openai: what the judge is asked: harmful (default; Llama Guard's "
                                        "safe/unsafe), mm_safetybench, vlsafe, vlguard_safe_safe, alpaca_eval "
                                        "(the last two compare with each line's 'reference'; mm_safetybench reads "
                                        "its 'category')")
    judge.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="model judges' weights and compute")
    add_judge_arguments(judge, f"default OUT{CACHE_SUFFIX}, a directory beside --out")
    judge.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax import storage
    from vlguard_jax.config import ConfigError
    from vlguard_jax.evaluate import judging
    from vlguard_jax.evaluate.judges import Item, JudgeError

    records, items, bad = [], [], 0
    for number, line in enumerate(storage.path(args.input).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            response, prompt = record["response"], record.get("prompt", "")
            if not isinstance(response, str) or not isinstance(prompt, str):
                raise TypeError("'response' or 'prompt' is not a string")
            if not isinstance(record.get("reference", ""), str):
                raise TypeError("'reference' is not a string")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            print(f"skipped line {number} of {args.input}: {type(e).__name__}: {e}", file=sys.stderr)
            bad += 1
            continue
        records.append(record)
        items.append(Item(prompt, response, record.get("image"), record.get("reference"),
                          None if record.get("category") is None else str(record["category"])))
    name = f"{args.judge}:{args.rubric}" if args.rubric else args.judge
    try:
        judge = judging.build(name, judge_options(args, f"{args.output}{CACHE_SUFFIX}"))
        judgments = judge.judge(items)
    except (JudgeError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for record, judgment in zip(records, judgments):
        if judgment.refused is not None:
            record["refusal"] = judgment.refused
        record.update(unsafe=judgment.unsafe, judge_label=judgment.label, judge_raw=judgment.raw)
        if judgment.score is not None:
            record["judge_score"] = judgment.score
    storage.write_text(args.output, "".join(json.dumps(record) + "\n" for record in records))
    n = len(records)
    if all(j.refused is not None for j in judgments):  # a refusal judge: the line as it always was
        refusals = sum(j.refused for j in judgments)
        asr = 100.0 * (n - refusals) / n if n else float("nan")
        print(f"judge={judge.name} n={n} refusals={refusals} ASR={asr:.2f}% skipped={bad}")
        return 0
    pairwise = judging.decides(name) == ("win_rate",)
    decided = [j.score if pairwise else j.unsafe for j in judgments]
    decided = [value for value in decided if value is not None]
    percent = 100.0 * sum(decided) / len(decided) if decided else float("nan")
    counters = " ".join(f"{k}={v}" for k, v in judge.counters().items())
    print(f"judge={name} n={n} {'win_rate' if pairwise else 'unsafe'}={percent:.2f}% (of {len(decided)} decided) "
          f"skipped={bad} {counters}")
    return 0
