"""`vlguard-jax demo --dpo`: safety by preference optimisation (DPO) instead of post-hoc SFT, on the tiny demo model.

1. the demo's synthetic data and tokenizer (`demo.prepare`); its `pairs.jsonl` holds the preference pairs: the train
   split's refusals chosen over compliant answers, its right visual answers over wrong ones, and the clean
   helpfulness data's first questions, right answer over wrong;
2. the demo's stage 1: the tiny LLaVA instruction-tuned from scratch on data that holds compliant answers to harmful
   requests (`demo.instruction_tune`), evaluated (`demo.evaluate_model`);
3. DPO with LoRA from that checkpoint (`data.mixture: preference`, `train.objective: dpo`), the stage-1 model its
   reference, with RPO's NLL anchor on the chosen answers (see `DPO_RPO_ALPHA`: without it DPO does not make this
   model refuse); its implicit rewards per step are in WORKDIR/metrics.jsonl and WORKDIR/loss.png;
4. the demo's post-hoc VLGuard SFT from the same checkpoint (`demo.posthoc`), for comparison;
5. both evaluated as the demo evaluates; `summary.json`, `summary.png`, and the table printed.
Every stage goes through the library paths of the real recipes (`train`, `export_workdir`, `evaluate`).
"""

from __future__ import annotations

from pathlib import Path

from vlguard_jax import demo
from vlguard_jax.train.loop import train

# The DPO stage, tuned on this demo (`--scale 1`, 2-core CPU; 1,000 pairs, 62 steps an epoch). Pure DPO (rpo_alpha 0)
# never met the target: stage 1 never saw a refusal, so each refusal starts near uniform (~ -7 nats a token, ~ -100 an
# answer), and DPO meets its margin by pushing the compliant and wrong answers down instead of raising the refusals.
# Over β 0.003-0.5, learning rates 2e-4 to 2e-3, 2-6 epochs, LoRA rank 16 and 64, batch 8 and 16, and IPO (τ 0.02-0.5),
# the unsafe ASR stayed at 59 or more (mostly 96-100) with answers decaying into word salad (helpfulness 0-69), except β
# 0.003 at 2e-4 for 3 epochs: 25 / 4 ASR with fragmentary refusals, which one more epoch or a doubled learning rate
# collapsed (ASR 98-99). The RPO anchor (`train.preference.rpo_alpha`: + α × the chosen answer's token-mean NLL) is what
# makes the chosen answers generable: with it every DPO setting tried (β 0.1 and 0.5, learning rate 1e-3 and 2e-3, 2-3
# epochs, seeds 0 and 1) gave 0 / 0 ASR and helpfulness 70-75; IPO with it (τ 0.5) did not (100 / 100: its fixed target
# margin holds the chosen answers near the reference's). Ablation: at β 1e-4 (the anchor alone, i.e. SFT on the chosen
# answers) the row is the same (0 / 0, helpfulness 78): on this model the safety comes from the anchor; the DPO term
# adds the reward margin the run logs, not a better row.
DPO_BETA = 0.1  # β: TRL's default; 0.5 gave the same ASR (0 / 0) with helpfulness 70 instead of 74-75
DPO_RPO_ALPHA = 1.0  # the NLL anchor's weight (the RPO paper's and TRL's suggested 1.0)
DPO_LEARNING_RATE = 1.0e-3  # the adapters' peak (cosine decay, 5% warm-up); 2e-3 gave the same 0 / 0
DPO_PROJECTOR_LEARNING_RATE = 1.0e-4  # the projector's (trained under LoRA): a tenth, as in the post-hoc stage
DPO_EPOCHS = 3  # passes over the pairs: 2 already gave 0 / 0 (helpfulness 74); 3 gave 75 and a wider margin
DPO_BATCH = 16  # pairs a step
DPO_LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.05}  # the post-hoc stage's; rank 64 gained nothing

STAGES = {"before": "instruction-tuned", "posthoc": "post-hoc SFT (VLGuard)", "dpo": "DPO + RPO (VLGuard pairs)"}


def dpo_config(paths: dict, base: Path, seed: int = 0, **train_overrides):
    """The DPO stage's config: LoRA from `base` on the synthetic dataset's pairs.jsonl."""
    images = str(paths["images"])
    template = {
        "data": {**demo.DATA, "mixture": "preference"},
        "train": {"mode": "lora", "objective": "dpo", "preference": {"beta": DPO_BETA, "rpo_alpha": DPO_RPO_ALPHA},
                  "lora": dict(DPO_LORA), "epochs": DPO_EPOCHS, "global_batch_size": DPO_BATCH,
                  "log_every": 1, "checkpoint_every": 1000,  # a reward-curve point per step
                  "optimizer": {"learning_rate": DPO_LEARNING_RATE,
                                "projector_learning_rate": DPO_PROJECTOR_LEARNING_RATE, "warmup_ratio": 0.05}},
    }
    return demo.stage_config(template, model={"path": str(base)},
                             data={"preference": str(paths["pairs"]), "preference_images": images, "seed": seed},
                             train={"seed": seed, **train_overrides})


def dpo(workdir: Path, paths: dict, base: Path, seed: int = 0, **train_overrides) -> Path:
    """Step 3; returns the run's workdir (metrics.jsonl: loss, reward_accuracy, reward_chosen/rejected/margin)."""
    train(dpo_config(paths, base, seed, **train_overrides), workdir)
    return workdir


def run_dpo_demo(out: str | Path = "runs/demo_dpo", scale: float = 1.0) -> dict:
    """`scale` shrinks the dataset (and so the run) for quick checks; 1.0 is the documented demo. Measured on the
    2-core CPU (`vlguard-jax demo --dpo`, 3 min 33 s after a fresh install): unsafe ASR 100 → 0 (post-hoc SFT 0),
    safe-unsafe ASR 100 → 0 (10), safe-safe refusals 0 → 0 (0), helpfulness 71 → 75 (74)."""
    out = Path(out)
    print(f"[1/6] synthetic VLGuard-format data, preference pairs and tokenizer → {out / 'data'}")
    paths = demo.prepare(out, scale)
    print("[2/6] instruction tuning from scratch (helpful data with compliant answers to harmful requests)")
    base = demo.instruction_tune(out, paths)
    print("[3/6] evaluating the instruction-tuned model")
    summary = {"before": demo.evaluate_model(base, paths, out / "eval_before")}
    print(f"[4/6] DPO with LoRA on the preference pairs ({paths['pairs'].name}), the instruction-tuned model the "
          f"reference")
    summary["dpo"] = demo.evaluate_model(dpo(out / "dpo", paths, base), paths, out / "eval_dpo")
    print("[5/6] post-hoc VLGuard fine-tuning with LoRA (safety data + clean helpfulness sample), for comparison")
    summary["posthoc"] = demo.evaluate_model(demo.posthoc(out / "posthoc", paths, base), paths, out / "eval_posthoc")
    print("[6/6] summary")
    summary = {stage: summary[stage] for stage in STAGES}
    demo.write_summary(out, summary, STAGES, "post-hoc SFT vs DPO on the tiny demo model")
    print(table(summary))
    return summary


def table(summary: dict) -> str:
    lines = ["| metric | " + " | ".join(STAGES.values()) + " |", "|---" * (len(STAGES) + 1) + "|"]
    lines += [f"| {metric} | " + " | ".join(str(summary[stage].get(metric)) for stage in STAGES) + " |"
              for metric in demo.METRICS]
    return "\n".join(lines)
