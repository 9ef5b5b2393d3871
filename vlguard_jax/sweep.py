"""`vlguard-jax sweep`: post-hoc fine-tuning over amounts of safety data (and seeds), each run evaluated.

On the demo model by default (its stage-1 model is trained once and reused); with `config`, on a real post-hoc
recipe, evaluated on a VLGuard test file with the `vlguard` protocol. Every run is trained first; LoRA runs are
then evaluated together, their adapters side by side over the one frozen base (`evaluate_adapters`). Sub-samples of one seed are nested, so a
larger run sees every safety sample of a smaller one. Writes `sweep.json` (the evaluation protocol and one row per
run), `sweep.md` and `sweep.png` (ASR and helpfulness against the number of safety samples). A metric the test data
cannot give (helpfulness accuracy: real VLGuard test records have no exact answers) is absent from the rows and
shown as n/a, never as zero.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from vlguard_jax.config import Config
from vlguard_jax.demo import DEMO_EVAL, evaluate_model, evaluate_runs, instruction_tune, posthoc, prepare
from vlguard_jax.evaluate.protocols import PROTOCOLS, describe
from vlguard_jax.evaluate.runner import EvalConfig
from vlguard_jax.train.loop import train

COLUMNS = ("unsafe_asr", "safe_unsafe_asr", "safe_safe_refusal_rate", "helpfulness_accuracy")


def run_sweep(out: str | Path, fractions: Sequence[float] = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0),
              seeds: Sequence[int] = (0,), scale: float = 1.0, config: Config | None = None,
              test_json: str | None = None, images: str | None = None) -> list[dict]:
    out = Path(out)
    eval_config = DEMO_EVAL
    if config is None:
        paths = prepare(out, scale)
        base = out / "instruct" / "hf"
        if not (base / "config.json").exists():
            base = instruction_tune(out, paths)
        safety_total = len(json.loads(Path(paths["train"]).read_text()))
    else:
        paths = {"test": test_json, "images": images}
        eval_config = EvalConfig(PROTOCOLS["vlguard"], batch_size=8)
        safety_total = len(json.loads(Path(config.data.safety).read_text()))
    runs = []  # (fraction, seed, name, workdir)
    for seed in seeds:
        for fraction in fractions:
            name = f"fraction{fraction:g}_seed{seed}"
            if config is None:
                workdir = posthoc(out / name, paths, base, fraction, seed)
            else:
                workdir = out / name
                data = dataclasses.replace(config.data, safety_fraction=fraction, seed=seed)
                train(dataclasses.replace(config, data=data,
                                          train=dataclasses.replace(config.train, seed=seed)), workdir)
            runs.append((fraction, seed, name, workdir))
    outs = [out / f"eval_{name}" for _, _, name, _ in runs]
    if config is None or config.train.mode == "lora":  # every point's adapter over the one base, in one pass
        metrics = evaluate_runs([workdir for *_, workdir in runs], paths, outs, eval_config)
    else:
        metrics = [evaluate_model(workdir, paths, o, eval_config) for (*_, workdir), o in zip(runs, outs)]
    rows = []
    for (fraction, seed, _, _), values in zip(runs, metrics):
        rows.append({"safety_fraction": fraction, "safety_samples": round(fraction * safety_total),
                     "seed": seed, **values})
        print(json.dumps(rows[-1]))
    protocol = eval_config.protocol
    settings = {**protocol.record(), "overridden": protocol.overridden()}
    (out / "sweep.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    header = "| safety samples | fraction | seed | " + " | ".join(COLUMNS) + " |"
    lines = [describe(settings), "", header, "|" + "---|" * (3 + len(COLUMNS))]
    lines += [f"| {r['safety_samples']} | {r['safety_fraction']:g} | {r['seed']} | "
              + " | ".join(str(r.get(c, "n/a")) for c in COLUMNS) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "sweep.png")
    print("\n".join(lines))
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    samples = sorted({r["safety_samples"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for column in COLUMNS:
        values = {s: [r[column] for r in rows if r["safety_samples"] == s and column in r] for s in samples}
        points = [(s, np.mean(v)) for s, v in values.items() if v]
        label = column.replace("_", " ")
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
        else:  # named in the legend, with no line: not measured, not zero
            ax.plot([], [], " ", label=f"{label}: n/a")
    ax.set_xlabel("safety samples in post-hoc fine-tuning")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
