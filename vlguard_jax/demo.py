"""`vlguard-jax demo`: the whole method on a tiny model, on a CPU, in minutes.

1. generate the synthetic VLGuard-format data and train a tokenizer offline;
2. instruction-tune a tiny LLaVA from scratch on helpful data that also holds compliant answers to harmful
   requests (what erodes safety in VLLM fine-tuning);
3. evaluate: ASR on the Unsafe and Safe-Unsafe subsets with VLGuard's refusal judge, refusals and exact-match
   helpfulness on Safe-Safe;
4. post-hoc VLGuard fine-tuning with LoRA: the safety data plus a clean helpfulness sample;
5. evaluate again; write `summary.json`, a chart, and print the before/after table.
Every stage goes through the library paths the 7B recipes use (`train`, `export_workdir`, `evaluate`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from vlguard_jax import charts, storage
from vlguard_jax.config import Config, DataConfig, config_from_dict
from vlguard_jax.data.images import ImageSource
from vlguard_jax.data.recipes import synthetic_dataset
from vlguard_jax.evaluate import benchmarks
from vlguard_jax.evaluate.protocols import protocol
from vlguard_jax.evaluate.runner import EvalConfig, evaluate, evaluate_adapters
from vlguard_jax.train.loop import train
from vlguard_jax.train.setup import load_tokenizer
from vlguard_jax.train.trained import export_workdir, load_adapters, load_model_and_tokenizer, tokenizer_dir

ARCHITECTURE = {
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "text_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 4, "rms_norm_eps": 1.0e-5, "max_position_embeddings": 512},
}
DATA = {"template": "vicuna_v1", "max_length": 256, "buckets": [128, 256]}
INSTRUCT = {  # stage 1: from scratch, full training
    "model": {"architecture": ARCHITECTURE},
    "data": {**DATA, "mixture": "helpful"},
    "train": {"mode": "full", "epochs": 3, "global_batch_size": 16, "log_every": 10, "checkpoint_every": 100,
              "optimizer": {"learning_rate": 2.0e-3, "projector_learning_rate": 2.0e-3, "warmup_ratio": 0.05}},
}
POSTHOC = {  # stage 2: VLGuard post-hoc LoRA on the stage-1 model
    "data": {**DATA, "mixture": "posthoc"},
    "train": {"mode": "lora", "lora": {"rank": 16, "alpha": 32.0, "dropout": 0.05}, "epochs": 3,
              "global_batch_size": 16, "log_every": 10, "checkpoint_every": 100,
              "optimizer": {"learning_rate": 2.0e-3, "projector_learning_rate": 2.0e-4, "warmup_ratio": 0.05}},
}
METRICS = {"unsafe_asr": ("vlguard_unsafes", "value"), "safe_unsafe_asr": ("vlguard_safe_unsafes", "value"),
           "safe_safe_refusal_rate": ("vlguard_safe_safes", "value"),
           "helpfulness_accuracy": ("vlguard_safe_safes", "accuracy")}


def stage_config(template: dict, **sections) -> Config:
    """`template` (a config dict) with `sections` merged into its sections."""
    raw = copy.deepcopy(template)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, "demo")


# The tiny model is trained as LLaVA-1.5 is (vicuna_v1, images padded to a square): evaluated as LLaVA evaluates.
DEMO_EVAL = EvalConfig(protocol("llava", max_new_tokens=32), batch_size=32)


def evaluate_model(model_dir: Path, paths: dict, out: Path, config: EvalConfig = DEMO_EVAL) -> dict:
    """The demo metrics on the VLGuard-format test split at `paths["test"]`. A metric the data cannot give is left
    out, never zero: helpfulness accuracy needs exact answers, which real VLGuard test records lack."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    suite = benchmarks.load("vlguard", paths["test"])
    return _metrics(evaluate(model, tokenizer, suite, out, ImageSource(paths["images"]), config))


def evaluate_runs(workdirs: Sequence[Path], paths: dict, outs: Sequence[Path], config: EvalConfig = DEMO_EVAL
                  ) -> list[dict]:
    """`evaluate_model` of K LoRA runs over one base, in one pass over the frozen base (a sweep's points)."""
    model, adapters, run_config = load_adapters(workdirs)
    tokenizer = load_tokenizer(run_config, tokenizer_dir(run_config, Path(workdirs[0])))
    suite = benchmarks.load("vlguard", paths["test"])
    summaries = evaluate_adapters(model, adapters, tokenizer, suite, outs, ImageSource(paths["images"]), config)
    return [_metrics(summary) for summary in summaries]


def _metrics(summary: dict) -> dict:
    scores = summary["benchmarks"]
    return {name: scores[bench][key] for name, (bench, key) in METRICS.items()
            if scores[bench].get(key) is not None}


def prepare(out: Path, scale: float) -> dict:
    sizes = {"image_size": 32, "num_train_images": round(400 * scale), "num_test_images": round(200 * scale),
             "num_instruct": round(1200 * scale), "num_helpful": round(400 * scale)}
    return {**synthetic_dataset(DataConfig(synthetic_options=sizes), out), "num_helpful": sizes["num_helpful"]}


def instruction_tune(out: Path, paths: dict) -> Path:
    """Stage 1; returns the exported llava-hf checkpoint (the base of every post-hoc run)."""
    config = stage_config(INSTRUCT, model={"tokenizer": str(paths["tokenizer"])},
                    data={"helpful": str(paths["instruct"]), "helpful_images": str(paths["images"])})
    train(config, out / "instruct")
    return export_workdir(out / "instruct", out / "instruct" / "hf")


def posthoc(workdir: Path, paths: dict, base: Path, safety_fraction: float = 1.0, seed: int = 0,
            exclude_categories: Sequence[str] = ()) -> Path:
    """Stage 2 on `safety_fraction` of the safety data (nested across fractions for one seed), less the harm
    categories in `exclude_categories` (a sweep's held-out category)."""
    images = str(paths["images"])
    config = stage_config(POSTHOC, model={"path": str(base)},
                    data={"safety": str(paths["train"]), "safety_images": images, "helpful": str(paths["helpful"]),
                          "helpful_images": images, "num_helpful": paths["num_helpful"],
                          "safety_fraction": safety_fraction, "seed": seed,
                          "safety_exclude_categories": list(exclude_categories)},
                    train={"seed": seed})
    train(config, workdir)
    return workdir


def run_demo(out: str | Path = "runs/demo", scale: float = 1.0) -> dict:
    """`scale` shrinks the dataset (and so the run) for quick checks; 1.0 is the documented demo."""
    out = Path(out)
    print(f"[1/5] synthetic VLGuard-format data and tokenizer → {out / 'data'}")
    paths = prepare(out, scale)
    print("[2/5] instruction tuning from scratch (helpful data with compliant answers to harmful requests)")
    base = instruction_tune(out, paths)
    print("[3/5] evaluating the instruction-tuned model")
    before = evaluate_model(base, paths, out / "eval_before")
    print("[4/5] post-hoc VLGuard fine-tuning with LoRA (safety data + clean helpfulness sample)")
    workdir = posthoc(out / "posthoc", paths, base)
    print("[5/5] evaluating the safety fine-tuned model")
    after = evaluate_model(workdir, paths, out / "eval_after")
    summary = {"before": before, "after": after}
    write_summary(out, summary, {stage: stage for stage in summary},
                  "VLGuard post-hoc fine-tuning on the tiny demo model")
    print(table(summary))
    return summary


def write_summary(out: Path, summary: dict, labels: dict, title: str) -> None:
    """OUT/summary.json and OUT/summary.png: the demo metrics of each run in `labels` (run → its label)."""
    storage.write_json(out / "summary.json", summary)
    charts.bars(out / "summary.png", [n.replace("_", "\n") for n in METRICS],
                {label: [summary[run].get(n) for n in METRICS] for run, label in labels.items()}, "%", title=title)


def table(summary: dict) -> str:
    lines = ["| metric | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {summary['before'][name]} | {summary['after'][name]} |" for name in METRICS]
    return "\n".join(lines)
