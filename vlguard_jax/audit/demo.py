"""`vlguard-jax demo --audit`: VLGuard's data-audit argument (its Table 1) end to end on the tiny demo model, offline.

VLLM instruction data holds harmful samples, and instruction tuning an aligned LLM on them erodes its safety; the
same data minus what Llama Guard flags ("Clean") erodes it less.
1. the demo's synthetic data (`demo.prepare`), the answer key of its instruction set and a disjoint split for the
   moderator (`data.synthetic_audit`);
2. the moderator: a tiny Llama Guard trained from scratch on that split (`audit.moderator`);
3. the audit of the instruction set through the library (`audit.run_audit`, judge `llama_guard`), scored against
   the answer key (precision, recall);
4. an aligned base: the tiny LLaVA trained from scratch on VLGuard-format safety data and clean visual QA;
5. the base instruction-tuned (full) twice: on the audited data ("original") and on the audit's clean.json;
6. all three evaluated as the demo evaluates; `summary.json`, `summary.png`, and the table printed.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlguard_jax import demo
from vlguard_jax.audit import AuditConfig, flagged_ids, run_audit
from vlguard_jax.audit.moderator import train_moderator
from vlguard_jax.data import synthetic_audit
from vlguard_jax.evaluate.judging import JudgeOptions
from vlguard_jax.train.loop import train
from vlguard_jax.train.trained import export_workdir

ALIGN = {  # the aligned LLM's part (Vicuna's in LLaVA): from scratch, on refusals to harmful requests and visual QA
    "model": {"architecture": demo.ARCHITECTURE},
    "data": {**demo.DATA, "mixture": "mixed"},
    "train": demo.INSTRUCT["train"],
}
TUNE = {  # instruction tuning the aligned base, all weights but the vision tower, as LLaVA's second stage
    "data": {**demo.DATA, "mixture": "helpful"},
    "train": {**demo.INSTRUCT["train"], "epochs": 2,
              "optimizer": {"learning_rate": 1.0e-3, "projector_learning_rate": 1.0e-3, "warmup_ratio": 0.05}},
}
MODELS = {"aligned": "aligned base", "original": "tuned on the audited data", "clean": "tuned on clean.json"}


def align(out: Path, paths: dict, seed: int = 0) -> Path:
    """Step 4; returns the exported base."""
    images = str(paths["images"])
    config = demo.stage_config(ALIGN, model={"tokenizer": str(paths["tokenizer"])},
                               data={"safety": str(paths["train"]), "safety_images": images,
                                     "helpful": str(paths["helpful"]), "helpful_images": images, "seed": seed},
                               train={"seed": seed})
    train(config, out / "aligned")
    return export_workdir(out / "aligned", out / "aligned" / "hf")


def tune(workdir: Path, paths: dict, base: Path, data: Path, seed: int = 0) -> Path:
    """Step 5 on the instruction file `data`; returns the run's workdir."""
    config = demo.stage_config(TUNE, model={"path": str(base)},
                               data={"helpful": str(data), "helpful_images": str(paths["images"]), "seed": seed},
                               train={"seed": seed})
    train(config, workdir)
    return workdir


def score(flagged: list[str], planted: dict[str, str], audit: dict) -> dict:
    """The audit against the answer key, per conversation (precision is None when nothing was flagged)."""
    hits = len(set(flagged) & set(planted))
    return {"precision": round(hits / len(flagged), 4) if flagged else None,
            "recall": round(hits / len(planted), 4) if planted else None,
            "flagged": len(flagged), "planted": len(planted), "conversations": audit["conversations"],
            "conversations_per_s": audit["throughput"]["conversations_per_s"],
            "tokens_per_s": audit["throughput"]["tokens_per_s"]}


def run_audit_demo(out: str | Path = "runs/demo_audit", scale: float = 1.0, seed: int = 0) -> dict:
    """`scale` shrinks the data (and so the run) for quick checks; `seed` seeds every training run. The defaults are
    the documented demo."""
    out = Path(out)
    print(f"[1/6] synthetic data, its answer key and the moderator's split → {out / 'data'}")
    paths = demo.prepare(out, scale)
    keys = synthetic_audit.write(out / "data" / "audit", paths["instruct"], round(600 * scale), seed)
    print("[2/6] training the moderator (a tiny Llama Guard) from scratch on its own split")
    guard = train_moderator(out / "moderator", keys["moderator"], seed)
    print(f"[3/6] auditing {paths['instruct'].name} with it (judge llama_guard)")
    audited = run_audit(paths["instruct"], "llava", out / "audit", "llama_guard",
                        JudgeOptions(model=str(guard), dtype="float32"), config=AuditConfig(batch_size=32))
    planted = json.loads(keys["truth"].read_text())["planted"]
    summary = {"audit": score(flagged_ids(out / "audit"), planted, audited)}
    print("[4/6] aligning the tiny LLaVA from scratch (refusals to harmful requests, visual QA)")
    base = align(out, paths, seed)
    print("[5/6] instruction tuning the aligned model on the audited data and on its clean part")
    runs = {"aligned": base, "original": tune(out / "original", paths, base, paths["instruct"], seed),
            "clean": tune(out / "clean", paths, base, out / "audit" / "clean.json", seed)}
    print("[6/6] evaluating the three models")
    for name, model in runs.items():
        summary[name] = demo.evaluate_model(model, paths, out / f"eval_{name}")
    demo.write_summary(out, summary, MODELS, "instruction tuning on audited vs clean data (tiny demo model)")
    print(table(summary))
    return summary


def table(summary: dict) -> str:
    audit = summary["audit"]
    lines = [f"audit: {audit['flagged']} of {audit['conversations']} conversations flagged, {audit['planted']} "
             f"planted; precision {audit['precision']}, recall {audit['recall']}", "",
             "| metric | " + " | ".join(MODELS.values()) + " |", "|---" * (len(MODELS) + 1) + "|"]
    lines += [f"| {metric} | " + " | ".join(str(summary[name].get(metric)) for name in MODELS) + " |"
              for metric in demo.METRICS]
    return "\n".join(lines)
