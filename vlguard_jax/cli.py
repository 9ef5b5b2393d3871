"""`vlguard-jax` command line: thin wrappers over the library API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlguard_jax.data.chat import TEMPLATES
from vlguard_jax.data.images import MODES as IMAGE_MODES

DTYPES = ("float32", "bfloat16", "float16")
PROTOCOL_FLAGS = ("template", "image_mode", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed", "judge")


def _convert(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from vlguard_jax.checkpoints.hf import load_pretrained, save_pretrained
    from vlguard_jax.checkpoints.tokenizer import convert_tokenizer
    from vlguard_jax.parallel import make_mesh

    dtype = jnp.dtype(args.dtype)
    mesh = make_mesh(fsdp=jax.local_device_count(), devices=jax.local_devices())  # a 13B fp32 model on many chips
    model = load_pretrained(args.source, dtype=dtype, vision_tower=args.vision_tower, projector=args.projector,
                            mesh=mesh)
    out = save_pretrained(model, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote {model.config.layout} weights and config.json to {out}")
    print(convert_tokenizer(args.source, out, model.config))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.data.check import check_dataset, write_report

    tokenizer = None
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        from vlguard_jax.checkpoints.tokenizer import add_special
        from vlguard_jax.data.sources import IMAGE_PLACEHOLDER

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        add_special(tokenizer, IMAGE_PLACEHOLDER)  # a Vicuna tokenizer has none; a run adds it the same way
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


def _distributed(args: argparse.Namespace) -> None:
    """Multi-host start-up: explicit coordinator flags, or `--distributed` for auto-detection (TPU pods, SLURM)."""
    import jax

    if args.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def _train(args: argparse.Namespace) -> int:
    from vlguard_jax.config import load_config

    config = load_config(args.config, args.overrides)
    _distributed(args)
    import jax

    from vlguard_jax.doctor import cpu_warning
    from vlguard_jax.train.loop import train

    warning = cpu_warning(config)
    if warning and jax.process_index() == 0:
        print(f"warning: {warning}", file=sys.stderr)

    workdir = args.workdir or Path("runs") / args.config.stem
    result = train(config, workdir)
    print(f"{result.status} at step {result.steps}/{result.total_steps}; outputs in {result.workdir}")
    return 0


def _env(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.doctor import format_report, report

    result = report(args.config, args.overrides, args.architecture)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from vlguard_jax.train.trained import export_workdir

    try:
        export_workdir(args.workdir, args.out, args.format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} export of {args.workdir} to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
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
    options = _judge_options(args, args.out / "judge_cache")
    for subset, judge in assigned.items():
        if judge is not None:
            judging.check(judge, options, subset)  # before the model loads
    _distributed(args)
    import jax
    import jax.numpy as jnp

    from vlguard_jax.data.images import ImageSource
    from vlguard_jax.evaluate.fingerprint import check, describe
    from vlguard_jax.evaluate.runner import EvalConfig, auto_batch_size, eval_mesh, evaluate
    from vlguard_jax.train.trained import load_model_and_tokenizer

    labels = [benchmarks.spec(name).label(args.sample, args.sample_seed) for name in names]
    files = [path for data in args.data for path in benchmarks.paths(data)]
    run = {**describe(args.model, labels, files, args.images, chosen, args.dtype),
           **judging.record(assigned, options)}
    if not args.overwrite:
        check(args.out, run)  # before the model loads: a refusal should not cost minutes
    mesh = eval_mesh(args.mesh, args.batch_size)
    model, tokenizer = load_model_and_tokenizer(args.model, jnp.dtype(args.dtype), mesh=mesh)
    if args.batch_size is None:
        sized = auto_batch_size(model, tokenizer, suite, chosen, mesh, list(assigned.values()))
        batch_size, how = sized.slots, sized.reason
    else:
        batch_size, how = args.batch_size, "--batch-size"
    if jax.process_index() == 0:
        print(f"slots: {batch_size} ({how})", flush=True)
    config = EvalConfig(chosen, batch_size)
    images = ImageSource(args.images) if args.images else None
    summary = evaluate(model, tokenizer, suite, args.out, images, config, fingerprint=run, overwrite=args.overwrite,
                       mesh=mesh, judge_options=options)
    if jax.process_index() == 0:
        print((args.out / "report.md").read_text())
    return 0 if summary["benchmarks"] else 1


def _benchmarks(args: argparse.Namespace) -> int:
    from vlguard_jax.evaluate.benchmarks import REGISTRY

    table = [("name", "--data", "judge", "metric")] + [(s.name, s.files, s.judge, s.metric) for s in REGISTRY.values()]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def _judge(args: argparse.Namespace) -> int:
    import json

    from vlguard_jax.config import ConfigError
    from vlguard_jax.evaluate import judging
    from vlguard_jax.evaluate.judges import Item, JudgeError

    records, items, bad = [], [], 0
    for number, line in enumerate(args.input.read_text().splitlines(), 1):
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
        judge = judging.build(name, _judge_options(args, args.judge_cache))
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
    args.output.write_text("".join(json.dumps(record) + "\n" for record in records))
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


def _compare(args: argparse.Namespace) -> int:
    from vlguard_jax.evaluate.report import compare

    print(compare(args.before, args.after))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.hft:
        from vlguard_jax.hft.demo import run_hft_demo as run
    else:
        from vlguard_jax.demo import run_demo as run
    out = args.out or Path("runs/demo_hft" if args.hft else "runs/demo")
    run(out, args.scale)
    print(f"summary, chart and every stage's outputs in {out}")
    return 0


def _hft(args: argparse.Namespace) -> int:
    from vlguard_jax.config import load_config
    from vlguard_jax.hft import grid, results

    config = load_config(args.config, args.overrides)
    _distributed(args)
    import jax

    rows = grid.run_grid(config, args.out)
    if jax.process_index() == 0:
        print(results.write(args.out, rows, grid.settings(config)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from vlguard_jax.config import load_config
    from vlguard_jax.sweep import run_sweep

    config = None
    if args.config is not None:
        if not (args.test_json and args.images):
            print("error: a sweep over a real config needs --test-json and --images", file=sys.stderr)
            return 2
        config = load_config(args.config, args.overrides)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    run_sweep(args.out, fractions, seeds, args.scale, config, args.test_json, args.images)
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json
    import os

    import jax

    if args.topology is not None:
        if not os.environ.get("JAX_PLATFORMS"):  # the slice is compiled for, never run: leave local TPUs alone
            jax.config.update("jax_platforms", "cpu")
    else:
        jax.config.update("jax_num_cpu_devices", args.devices)  # before the first device query: virtual CPUs
    from vlguard_jax.config import load_config
    from vlguard_jax.plan import plan
    from vlguard_jax.topology import TopologyError

    overrides = list(args.overrides)
    if args.mesh:
        overrides += [f"mesh.{part}" for part in args.mesh.split(",")]
    if args.max_batch and args.topology is None:
        print("error: --max-batch needs --topology (only libtpu's compile says what does not fit)", file=sys.stderr)
        return 2
    if args.topology is None and jax.default_backend() == "cpu" and jax.device_count() < args.devices:
        print(f"error: only {jax.device_count()} devices are available", file=sys.stderr)
        return 2
    try:
        result = plan(load_config(args.config, overrides), args.topology or args.devices, args.architecture,
                      max_batch=args.max_batch, log=lambda line: print(f"probe: {line}", flush=True))
    except TopologyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    print("attention: " + "; ".join(f"{part} {v['implementation']}" + (f" ({v['fallback_reason']})"
                                                                        if v["fallback_reason"] else "")
                                    for part, v in result["attention_parts"].items()))
    for name, value in result["per_device_bytes"].items():
        if value is not None:
            print(f"{name:>18}: {gib(value)} per device")
    if "fits" in result:
        where = f"{result['topology'] or result['devices']} ({result['device_kind']})"
        print(f"{where}: fits" if result["fits"] else f"{where}: does not fit: {result['compiler_message']}")
    if result["fits_hbm_gb"]:
        print("fits in HBM (GB): " + ", ".join(f"{gb}: {'yes' if ok else 'no'}"
                                              for gb, ok in result["fits_hbm_gb"].items()))
    print(f"model FLOPs per step: {result['model_flops_per_step']:.3e} ({result['model_flops_per_token']:.3e}/token)")
    for reshard in result["involuntary_rematerializations"]:
        print(f"warning: XLA replicates a tensor whole to reshard it (involuntary full rematerialization): {reshard}")
    if "max_per_device_batch" in result:
        print(f"largest per-device batch that fits at seq {result['seq_len']}: {result['max_per_device_batch']} "
              f"(rows per device per micro-batch)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from vlguard_jax.bench.run import run

    sizes = {k: getattr(args, k) for k in ("eval_prompts", "eval_slots", "eval_adapter_prompts")
             if getattr(args, k) is not None}  # unset: run's defaults
    run(args.sizes, args.out, args.repeats, tuple(args.decode_batch), pipeline=not args.no_pipeline,
        eval_workload=not args.no_eval_workload, **sizes)
    return 0


def _slots(value: str) -> int | None:
    """`--batch-size`: a positive count, or `auto` (None)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a positive count nor 'auto'")
    return int(value)


def _add_judge_arguments(parser: argparse.ArgumentParser, cache: str) -> None:
    parser.add_argument("--judge-url", help="openai: the server's base URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--judge-model", help="openai: the judge model's name; llama_guard, beaver_dam: its "
                                              "checkpoint directory")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                        help="openai: the environment variable holding the API key (unset: no key sent)")
    parser.add_argument("--judge-cache", type=Path, help=f"openai: directory of cached replies, so a re-run sends "
                                                         f"no request twice ({cache})")
    parser.add_argument("--judge-concurrency", type=int, default=8, help="openai: requests in flight at once")


def _judge_options(args: argparse.Namespace, cache: Path | None):
    from vlguard_jax.evaluate.judging import JudgeOptions

    return JudgeOptions(args.judge_url, args.judge_model, args.judge_api_key_env, args.judge_cache or cache,
                        args.judge_concurrency, getattr(args, "dtype", "bfloat16"))


def _add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distributed", action="store_true", help="multi-host: auto-detect (TPU pod, SLURM)")
    parser.add_argument("--coordinator", help="multi-host: coordinator address HOST:PORT")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument("--cpu-collectives", choices=("gloo", "mpi"), help="collectives for multi-process CPU runs")


def build_parser() -> argparse.ArgumentParser:
    from vlguard_jax.evaluate.benchmarks import REGISTRY
    from vlguard_jax.models.config import KNOWN_ARCHITECTURES

    parser = argparse.ArgumentParser(prog="vlguard-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the whole method on a tiny model in minutes, on a CPU")
    demo.add_argument("--out", type=Path, help="default runs/demo (runs/demo_hft with --hft)")
    demo.add_argument("--hft", action="store_true",
                      help="the harmful-fine-tuning protocol instead: HS and FA over poison ratios, with and "
                           "without the vlguard defence, on a tiny text-only model")
    demo.add_argument("--scale", type=float, default=1.0, help="dataset size factor (smaller: quicker check)")
    demo.set_defaults(run=_demo)

    hft = commands.add_parser("hft", help="harmful fine-tuning grid: poison ratios × defences, each a LoRA fine-tune "
                                          "scored for harmful score and fine-tune accuracy; re-run to resume")
    hft.add_argument("--config", type=Path, required=True, help="e.g. configs/hft_llama2_7b_chat_sst2.yaml")
    hft.add_argument("--out", type=Path, required=True)
    hft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    _add_distributed_arguments(hft)
    hft.set_defaults(run=_hft)

    sweep = commands.add_parser("sweep", help="post-hoc fine-tuning over amounts of safety data, each evaluated")
    sweep.add_argument("--out", type=Path, default=Path("runs/sweep"))
    sweep.add_argument("--fractions", default="0,0.05,0.1,0.25,0.5,1", help="fractions of the safety data")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument("--scale", type=float, default=1.0, help="demo dataset size factor")
    sweep.add_argument("--config", type=Path, help="a real post-hoc config instead of the demo model")
    sweep.add_argument("--test-json", help="VLGuard test.json (with --config)")
    sweep.add_argument("--images", help="its image directory or zip (with --config)")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sweep.set_defaults(run=_sweep)

    planner = commands.add_parser("plan", help="per-device memory and FLOPs of a config's train step (AOT, abstract)")
    planner.add_argument("--config", type=Path, required=True)
    target = planner.add_mutually_exclusive_group(required=True)
    target.add_argument("--devices", type=int, help="devices to plan for (virtual CPUs are fine)")
    target.add_argument("--topology", help="a TPU slice, compiled for by libtpu on this machine: v5e:2x4, "
                                           "v5p:2x2x2, v6e:2x4, … (pip install -e \".[tpu]\")")
    planner.add_argument("--max-batch", action="store_true",
                         help="with --topology: the largest per-device batch that fits (one compile per probe)")
    planner.add_argument("--mesh", help="e.g. data=1,fsdp=8,tensor=1 (default: the config's)")
    planner.add_argument("--architecture", help="a known shape instead of model.path: "
                                                 + ", ".join(KNOWN_ARCHITECTURES))
    planner.add_argument("--out", type=Path, help="write the plan as json")
    planner.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    planner.set_defaults(run=_plan)

    bench = commands.add_parser("bench", help="train-step, decode and pipeline throughput beside transformers + PEFT")
    bench.add_argument("--sizes", nargs="+", default=["tiny", "small"],
                       choices=["tiny", "small", "7b", "13b", "minigpt_tiny", "minigpt_small", "minigpt-v2"])
    bench.add_argument("--out", type=Path, help="write the results as json (rewritten after every measurement)")
    bench.add_argument("--repeats", type=int, default=3, help="timed pairs per figure (medians are reported)")
    bench.add_argument("--decode-batch", type=int, nargs="+", default=[1, 32])
    bench.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline measurement")
    bench.add_argument("--no-eval-workload", action="store_true",
                       help="skip the evaluation workload (continuous vs static engine vs transformers generate, and "
                            "4 LoRA adapters in one pass vs 4 sequential passes; tiny and small sizes)")
    bench.add_argument("--eval-prompts", type=int, help="prompts of the evaluation workload (default: bench.run's "
                                                         "EVAL_PROMPTS)")
    bench.add_argument("--eval-slots", type=int,
                       help="the continuous engine's slots and the static engines' batch size; each adapter's slots "
                            "in the multi-adapter run (default: EVAL_SLOTS)")
    bench.add_argument("--eval-adapter-prompts", type=int,
                       help="prompts each of the 4 adapters evaluates in the multi-adapter run (default: "
                            "EVAL_ADAPTER_PROMPTS)")
    bench.set_defaults(run=_bench)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint (original LLaVA + CLIP, any llava-hf layout, LLaVA's stage-1 parts or "
                        "MiniGPT-v2's released parts) to llava-hf layout (MiniGPT-v2: its minigpt_v2 layout)")
    convert.add_argument("source", type=Path, help="checkpoint directory (config.json + weights)")
    convert.add_argument("out", type=Path, help="output directory")
    convert.add_argument("--vision-tower", type=Path,
                         help="the separate tower: a CLIP checkpoint directory, or MiniGPT-v2's eva_vit_g.pth")
    convert.add_argument("--projector", type=Path,
                         help="the separate projector: LLaVA's stage-1 mm_projector.bin, or MiniGPT-v2's checkpoint")
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    convert.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GiB")
    convert.set_defaults(run=_convert)

    train = commands.add_parser("train", help="fine-tune (LoRA or full) as a config describes; re-run to resume")
    train.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
    train.add_argument("--workdir", type=Path, help="run directory (default: runs/<config name>)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=1")
    _add_distributed_arguments(train)
    train.set_defaults(run=_train)

    env = commands.add_parser("env", help="backend, devices, versions, whether jaxlib matches the hardware, and each "
                                          "model part's attention here")
    env.add_argument("--config", type=Path, help="whose model to describe (default: llava-1.5-7b's shapes in "
                                                 "bfloat16)")
    env.add_argument("--architecture", help="a known shape instead of the config's model: "
                                            + ", ".join(KNOWN_ARCHITECTURES))
    env.add_argument("--json", action="store_true", help="print the report as json")
    env.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.attention=xla")
    env.set_defaults(run=_env)

    export = commands.add_parser("export", help="export a trained workdir: merged llava-hf weights or a PEFT adapter")
    export.add_argument("--workdir", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--format", choices=("merged", "peft"), default="merged")
    export.set_defaults(run=_export)

    evaluate = commands.add_parser("eval", help="run safety/helpfulness benchmarks; re-run to resume")
    evaluate.add_argument("--model", type=Path, help="checkpoint directory or training workdir (needed but for --dry-run)")
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
    evaluate.add_argument("--out", type=Path, help="results directory (needed but for --dry-run)")
    evaluate.add_argument("--protocol", default="vlguard",
                          choices=("vlguard", "vlguard_minigptv2", "llava", "harmful_finetune"),
                          help="evaluation preset, recorded in run.json and summary.json: vlguard (VLGuard's "
                               "VLGuard_eval.py: llava_v1, CLIP resize + centre crop, greedy, 1 to 256 new tokens), "
                               "vlguard_minigptv2 (the same for MiniGPT-v2: its [vqa] prompt, 448-px resize), "
                               "or llava (LLaVA-1.5's eval: vicuna_v1, pad to square, greedy, 128 new tokens); "
                               "the flags below, where given, replace its fields")
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
    _add_judge_arguments(evaluate, "default OUT/judge_cache")
    evaluate.add_argument("--batch-size", type=_slots, default="auto", metavar="N|auto",
                          help="the engine's slots (prompts decoded together; a multiple of the mesh's data × fsdp). "
                               "auto: as many as the devices' memory holds for the benchmarks' longest prompt and "
                               "the new tokens, up to 256 (compiled ahead of time to measure); on devices that "
                               "report no memory (CPU), or beside a model judge, 8")
    evaluate.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                          help="compute dtype and that of the frozen weights (logits and sampling stay fp32)")
    evaluate.add_argument("--mesh", help="e.g. data=2,fsdp=4,tensor=1 (default: fsdp over as many devices as the batch "
                                         "size divides over, tensor over the rest)")
    _add_distributed_arguments(evaluate)
    evaluate.add_argument("--overwrite", action="store_true",
                          help="clear --out's earlier results (needed when they were made with other settings)")
    evaluate.set_defaults(run=_eval)

    listing = commands.add_parser("benchmarks", help="the benchmarks eval knows: what --data they read, judge, metric")
    listing.set_defaults(run=_benchmarks)

    judge = commands.add_parser("judge", help="judge responses made anywhere: jsonl lines with id, prompt and "
                                              "response; adds refusal (keyword judges), unsafe, judge_label, "
                                              "judge_raw")
    judge.add_argument("--in", dest="input", type=Path, required=True)
    judge.add_argument("--out", dest="output", type=Path, required=True)
    judge.add_argument("--judge", default="keywords",
                       help="keywords (VLGuard's rule), keywords_normalized, openai (an OpenAI-compatible "
                            "chat-completions judge model), llama_guard (a local Llama Guard checkpoint run by this "
                            "package) or beaver_dam (a local score-head moderation checkpoint)")
    judge.add_argument("--rubric", help="openai: what the judge is asked: harmful (default; Llama Guard's "
                                        "safe/unsafe), mm_safetybench, vlsafe, vlguard_safe_safe, alpaca_eval "
                                        "(the last two compare with each line's 'reference'; mm_safetybench reads "
                                        "its 'category')")
    _add_judge_arguments(judge, "none by default")
    judge.set_defaults(run=_judge)

    compare = commands.add_parser("compare", help="before/after table of two eval output directories")
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path)
    compare.set_defaults(run=_compare)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a dataset and report counts, skips and token lengths")
    check.add_argument("--format", choices=("vlguard", "llava", "alpaca"), required=True)
    check.add_argument("--json", type=Path, required=True, help="the dataset's json file")
    check.add_argument("--images", type=Path, help="image root: a directory or a .zip archive")
    check.add_argument("--tokenizer", type=Path, help="tokenizer directory, for token-length statistics")
    check.add_argument("--template", default="vicuna_v1", choices=TEMPLATES)
    check.add_argument("--max-length", type=int, default=2048)
    check.add_argument("--num-image-tokens", type=int, default=576)
    check.add_argument("--out", type=Path, help="write the full report (every skip) as json here")
    check.set_defaults(run=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlguard_jax.checkpoints.tensors import CheckpointError
    from vlguard_jax.config import ConfigError
    from vlguard_jax.data.sources import DataError

    try:
        return args.run(args)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
