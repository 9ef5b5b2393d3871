"""The robustness table: a harmful benchmark's score with a clean image and with each adversarial image, for
several models (a base model and its VLGuard-tuned version), each attacked at its budgets, and optionally every
model shown one model's adversarial images (does an attack transfer?).

One model is loaded at a time: attacked at each budget (OUT/attacks/MODEL_EPS/, a `vlguard-jax attack` directory),
then evaluated with the clean image and every adversarial image made so far for it (OUT/eval/MODEL/IMAGE/, an
`eval --image-override` directory with its run.json); the model named in `transfer_from` goes first. Re-running
resumes every part; OUT/robustness.json, .md and .png hold the table. Process 0 writes the images and every process
reads them back to evaluate: on several hosts OUT is a bucket (`gs://…`) or a folder they share.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental.multihost_utils import sync_global_devices

from vlguard_jax import charts, storage
from vlguard_jax.attack.image import initial_image, save_png
from vlguard_jax.attack.pgd import Budget, parse_epsilon
from vlguard_jax.attack.run import AttackConfig, run_attack, settings
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.evaluate import judging
from vlguard_jax.evaluate.benchmarks import Benchmark
from vlguard_jax.evaluate.checkpoint_eval import run_record
from vlguard_jax.evaluate.image_override import override_images, override_source
from vlguard_jax.evaluate.runner import EvalConfig, evaluate
from vlguard_jax.train.trained import load_model_and_tokenizer

CLEAN = "clean"


@dataclasses.dataclass(frozen=True)
class Grid:
    models: dict[str, str]  # name → checkpoint directory or training workdir
    budgets: dict[str, tuple[Budget, ...]]  # name → the budgets it is attacked at
    attack: AttackConfig  # corpus, initial image, steps, …; its budget is each cell's
    transfer_from: str | None = None  # every other model is also shown this model's adversarial images

    def __post_init__(self):
        if self.transfer_from is not None and self.transfer_from not in self.models:
            raise ValueError(f"transfer from {self.transfer_from!r}: not one of the models ({', '.join(self.models)})")


def robustness_grid(grid: Grid, suite: Sequence[Benchmark], labels: Sequence[str], files: Sequence[os.PathLike],
                    eval_config: EvalConfig, out: storage.PathLike, mesh, dtype: str = "bfloat16",
                    judge_options: judging.JudgeOptions = judging.JudgeOptions()) -> dict:
    """`{subset: {model: {image: score}}}` (also OUT/robustness.json); `suite` read from `files` (`labels`: the
    benchmarks as `eval`'s fingerprint names them)."""
    out = storage.path(out)
    protocol = eval_config.protocol
    transferred: dict[str, storage.Path] = {}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    order = sorted(grid.models, key=lambda name: name != grid.transfer_from)
    for name in order:
        path = grid.models[name]
        model, tokenizer = load_model_and_tokenizer(path, jnp.dtype(dtype), mesh=mesh)
        vision = VisionInputs.of(model.config, protocol.image_mode)
        clean = out / "attacks" / f"{name}_{CLEAN}.png"
        if jax.process_index() == 0:
            save_png(clean, initial_image(grid.attack.image, vision.image, grid.attack.seed))
        shown = {CLEAN: clean}
        for budget in grid.budgets[name]:
            config = dataclasses.replace(grid.attack, budget=budget)
            target = out / "attacks" / f"{name}_{slug(budget.label)}"
            run_attack(model, tokenizer, config, target, protocol, mesh, settings(path, config, protocol, dtype),
                       progress=False)
            shown[budget.label] = target / "adversarial.png"
        sync_global_devices(f"robustness grid: {name}'s images written")  # process 0 wrote them; all read them
        if name == grid.transfer_from:
            transferred = {f"{label} (from {name})": image for label, image in shown.items() if label != CLEAN}
        else:
            shown.update(transferred)
        for label, image in shown.items():
            record = run_record(path, suite, labels, files, protocol, judge_options, image_override=image,
                                dtype=dtype)
            summary = evaluate(model, tokenizer, override_images(suite, image.name), out / "eval" / name / slug(label),
                               override_source(image), eval_config, progress=False, fingerprint=record, mesh=mesh,
                               judge_options=judge_options)
            for subset, result in summary["benchmarks"].items():
                scores.setdefault(subset, {}).setdefault(name, {})[label] = result["value"]
        del model
    if jax.process_index() == 0:
        write_table(out, scores, list(grid.models))
    return scores


def write_table(out: storage.Path, scores: dict, models: list[str]) -> None:
    """OUT/robustness.json, robustness.md (a table per subset: models × images) and robustness.png."""
    storage.write_json(out / "robustness.json", scores)
    storage.write_text(out / "robustness.md", "\n\n".join(table(scores, subset, models) for subset in scores) + "\n")
    subset = next(iter(scores))
    images = _images(scores[subset], models)
    charts.bars(out / "robustness.png", [label.replace(" (", "\n(") for label in images],
                {name: [scores[subset][name].get(label) for label in images] for name in models},
                "score %", title=f"{subset}: clean vs adversarial images")


def table(scores: dict, subset: str, models: list[str]) -> str:
    images = _images(scores[subset], models)
    lines = [f"**{subset}**", "", "| model | " + " | ".join(images) + " |", "|---|" + "---|" * len(images)]
    for name in models:
        row = scores[subset].get(name, {})
        lines.append(f"| {name} | " + " | ".join("" if row.get(label) is None else f"{row[label]:.1f}"
                                               for label in images) + " |")
    return "\n".join(lines)


def _images(by_model: dict, models: list[str]) -> list[str]:
    """Every image label of the models: the clean image, then the budgets from the smallest to unconstrained, then
    the transferred images likewise."""
    labels = {label for name in models for label in by_model.get(name, {})}

    def order(label: str):
        budget, _, source = label.partition(" (from ")
        epsilon = -1.0 if budget == CLEAN else parse_epsilon(budget)
        return bool(source), source, math.inf if epsilon is None else epsilon

    return sorted(labels, key=order)


def slug(label: str) -> str:
    """An image label as a folder name: `16/255 (from base)` → `16_255_from_base`."""
    return label.replace("/", "_").replace(" ", "_").replace("(", "").replace(")", "")
