"""`vlguard-jax sweep`: post-hoc fine-tuning over amounts of safety data (and seeds), each run evaluated.

On the demo model by default (its stage-1 model is trained once and reused); with `config`, on a real post-hoc
recipe, evaluated on a VLGuard test file with the `vlguard` protocol. Every run is trained first; LoRA runs are
then evaluated together, their adapters side by side over the one frozen base (`evaluate_adapters`). Sub-samples of one seed are nested, so a
larger run sees every safety sample of a smaller one. Writes `sweep.json` (the evaluation protocol and one row per
run), `sweep.md` and `sweep.png` (ASR and helpfulness against the number of safety samples). A metric the test data
cannot give (helpfulness accuracy: real VLGuard test records have no exact answers) is absent from the rows and
shown as n/a, never as zero. Each run records what its training and evaluation depend on in `cells/NAME.json`: a
re-run with other settings is refused, naming them, unless `overwrite` recomputes those runs (`cells`).
With `holdout_category` (the paper's Fig. 5) every run trains without that harm category's safety data
(`data.safety_exclude_categories`), fractions are of the safety data left, and each row adds the Unsafe subset's ASR
per harm category of the test data (`holdout`), in sweep.json and as a second table in sweep.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Sequence

from vlguard_jax import cells, charts, holdout, storage
from vlguard_jax.config import Config
from vlguard_jax.data import harm_categories
from vlguard_jax.demo import DEMO_EVAL, evaluate_model, evaluate_runs, instruction_tune, posthoc, prepare
from vlguard_jax.evaluate.protocols import PROTOCOLS, describe
from vlguard_jax.evaluate.runner import EvalConfig
from vlguard_jax.train import pins
from vlguard_jax.train.loop import train

COLUMNS = ("unsafe_asr", "safe_unsafe_asr", "safe_safe_refusal_rate", "helpfulness_accuracy")


def run_sweep(out: storage.PathLike, fractions: Sequence[float] = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0),
              seeds: Sequence[int] = (0,), scale: float = 1.0, config: Config | None = None,
              test_json: str | None = None, images: str | None = None, overwrite: bool = False,
              holdout_category: str | None = None) -> list[dict]:
    out = storage.path(out)
    eval_config = DEMO_EVAL if config is None else EvalConfig(PROTOCOLS["vlguard"], batch_size=8)
    points = [(fraction, seed, f"fraction{fraction:g}_seed{seed}") for seed in seeds for fraction in fractions]
    cells.prepare(sweep_cells(out, points, scale, config, test_json, eval_config, holdout_category), overwrite,
                  f"the sweep in {out}")
    held_out = (holdout_category,) if holdout_category else ()
    if config is None:
        paths = prepare(out, scale)
        safety_total = _safety_total(paths["train"], held_out)
        base = out / "instruct" / "hf"
        if not (base / "config.json").exists():
            base = instruction_tune(out, paths)
    else:
        paths = {"test": test_json, "images": images}
        safety_total = _safety_total(config.data.safety, held_out or config.data.safety_exclude_categories)
    runs = []  # (fraction, seed, name, workdir)
    for fraction, seed, name in points:
        if config is None:
            workdir = posthoc(out / name, paths, base, fraction, seed, held_out)
        else:
            workdir = out / name
            train(_run_config(config, fraction, seed, holdout_category), workdir)
        runs.append((fraction, seed, name, workdir))
    outs = [out / f"eval_{name}" for _, _, name, _ in runs]
    if config is None or config.train.mode == "lora":  # every point's adapter over the one base, in one pass
        metrics = evaluate_runs([workdir for *_, workdir in runs], paths, outs, eval_config)
    else:
        metrics = [evaluate_model(workdir, paths, o, eval_config) for (*_, workdir), o in zip(runs, outs)]
    rows = []
    for (fraction, seed, _, _), values, eval_out in zip(runs, metrics, outs):
        rows.append({"safety_fraction": fraction, "safety_samples": round(fraction * safety_total),
                     "seed": seed, **values})
        if holdout_category:
            rows[-1]["unsafe_asr_by_category"] = holdout.unsafe_asr_by_category(eval_out, paths["test"])
        print(json.dumps(rows[-1]))
    protocol = eval_config.protocol
    settings = {**protocol.record(), "overridden": protocol.overridden(),
                **({"holdout_category": holdout_category} if holdout_category else {})}
    storage.write_json(out / "sweep.json", {"settings": settings, "rows": rows})
    header = "| safety samples | fraction | seed | " + " | ".join(COLUMNS) + " |"
    lines = [describe(settings), "", header, "|" + "---|" * (3 + len(COLUMNS))]
    lines += [f"| {r['safety_samples']} | {r['safety_fraction']:g} | {r['seed']} | "
              + " | ".join(str(r.get(c, "n/a")) for c in COLUMNS) + " |" for r in rows]
    if holdout_category:
        lines += [""] + holdout.table(rows, holdout_category)
    storage.write_text(out / "sweep.md", "\n".join(lines) + "\n")
    _plot(rows, out / "sweep.png")
    print("\n".join(lines))
    return rows


def sweep_cells(out: storage.PathLike, points: Sequence[tuple[float, int, str]], scale: float, config: Config | None,
                test_json: str | None, eval_config: EvalConfig, holdout_category: str | None = None
                ) -> list[cells.Cell]:
    """Each run's training and evaluation with what they depend on: on the demo model, its scale (the data and the
    stage-1 model, itself a cell), the point and any held-out category; on a config, the run's pinned fields (the
    held-out category among them) and data content, and the test data's content."""
    out = storage.path(out)
    digest = functools.cache(pins.content_digest)
    evaluation = eval_config.protocol.record()
    found = []
    if config is None:
        evaluation["demo.scale"] = scale
        found.append(cells.Cell("instruct", out / "cells" / "instruct.json",
                                (cells.Part("train", {"demo.scale": scale}, (out / "instruct",)),)))
    else:
        evaluation["test_json"] = digest(test_json)
    for fraction, seed, name in points:
        if config is None:
            training = {"demo.scale": scale, "data.safety_fraction": fraction, "data.seed": seed, "train.seed": seed,
                        **({"data.safety_exclude_categories": [holdout_category]} if holdout_category else {})}
        else:
            training = pins.result_settings(_run_config(config, fraction, seed, holdout_category), digest)
        found.append(cells.Cell(name, out / "cells" / f"{name}.json",
                                (cells.Part("train", training, (out / name,)),
                                 cells.Part("eval", evaluation, (out / f"eval_{name}",)))))
    return found


def _run_config(config: Config, fraction: float, seed: int, holdout_category: str | None = None) -> Config:
    """A point of the sweep on a config: `fraction` of the safety data (without `holdout_category`'s), drawn and
    trained with `seed`."""
    data = dataclasses.replace(config.data, safety_fraction=fraction, seed=seed)
    if holdout_category:
        data = dataclasses.replace(data, safety_exclude_categories=(holdout_category,))
    return dataclasses.replace(config, data=data, train=dataclasses.replace(config.train, seed=seed))


def _safety_total(path: str | Path, held_out: Sequence[str]) -> int:
    """The safety records a fraction is taken of: all of them, less the held-out categories' (each must name some),
    checked before any training."""
    labels = [harm_categories.of_record(r) for r in json.loads(Path(path).read_text())]
    harm_categories.check(held_out, labels, f"the sweep's held-out categories ({path})")
    return sum(not harm_categories.named(held_out, label) for label in labels)


def _plot(rows: list[dict], path: Path) -> None:
    import numpy as np

    samples = sorted({r["safety_samples"] for r in rows})
    fig, ax = storage.figure()
    points = {}
    for column in COLUMNS:
        values = {s: [r[column] for r in rows if r["safety_samples"] == s and column in r] for s in samples}
        points[column.replace("_", " ")] = [(s, np.mean(v)) for s, v in values.items() if v]
    charts.lines(ax, points, "safety samples in post-hoc fine-tuning", "%")
    ax.legend(fontsize=7)
    storage.save_figure(fig, path)
