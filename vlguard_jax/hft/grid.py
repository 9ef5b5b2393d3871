"""The harmful-fine-tuning grid: one LoRA fine-tune per (poison ratio, defence) cell, each evaluated for fine-tune
accuracy (FA) and harmful score (HS).

A cell is `OUT/p{p}_{defence}`: its training workdir, its evaluation and, once both are done, `result.json`
(written atomically), with `settings.json`: what its training and its evaluation depend on (`cells`). A re-run whose
settings differ from a cell's is refused, naming the fields, before anything runs (`overwrite` recomputes those
parts instead); otherwise it skips finished cells and resumes an interrupted one from its checkpoint and its
evaluation's finished batches. On several hosts every process runs the same grid (training and evaluation over all
devices, as `train` and `eval` do) and process 0 alone writes. Defences:
- `none`: the user's data as it is (n samples, round(p·n) of them harmful pairs);
- `vlguard`: `hft.safety_count` safety samples (refusals; VLGuard's data for a VLM) mixed into the same data;
- `posthoc`: the `none` cell's fine-tuned model, merged, then fine-tuned again on `hft.safety_count` safety samples
  and `hft.posthoc_helpful` task samples (VLGuard's post-hoc recipe), reusing the `none` cell's training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from vlguard_jax import cells, storage
from vlguard_jax.config import Config, ConfigError
from vlguard_jax.evaluate import benchmarks, fingerprint, judging, task_metrics
from vlguard_jax.evaluate.judging import REFUSAL_JUDGES, JudgeOptions
from vlguard_jax.evaluate.protocols import protocol
from vlguard_jax.evaluate.runner import EvalConfig, eval_mesh, evaluate
from vlguard_jax.train import pins
from vlguard_jax.train.loop import train
from vlguard_jax.train.trained import export_workdir, load_model_and_tokenizer

DEFENCES = ("none", "vlguard", "posthoc")
FA_TASKS = ("sst2", "ag_news", "gsm8k")  # data.task_format values with a test benchmark
ATTACKED = "attacked_merged"  # posthoc: the cell's folder of the attacked model, merged (the post-hoc run's base)


def check(config: Config) -> None:
    """Refuses, before any training, a grid that could not finish."""
    h, d = config.hft, config.data
    unknown = sorted(set(h.defences) - set(DEFENCES))
    if unknown:
        raise ConfigError(f"hft.defences: unknown {unknown}; known: {', '.join(DEFENCES)}")
    if d.task_format not in FA_TASKS:
        raise ConfigError(f"data.task_format {d.task_format!r} has no fine-tune accuracy benchmark; use one of "
                          f"{', '.join(FA_TASKS)}")
    needed = {"data.task": d.task, "data.poison": d.poison, "hft.test": h.test, "hft.harmful": h.harmful}
    if set(h.defences) - {"none"}:
        needed["data.safety"] = d.safety
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise ConfigError(f"the hft grid needs {', '.join(missing)} in the config")
    if h.fa_rule not in task_metrics.RULES:
        raise ConfigError(f"hft.fa_rule must be one of {', '.join(task_metrics.RULES)}, got {h.fa_rule!r}")
    if not all(0 <= p <= 1 for p in h.poison_ratios):
        raise ConfigError(f"hft.poison_ratios must lie in [0, 1], got {list(h.poison_ratios)}")


def check_files(config: Config) -> None:
    """Refuses, before any training, a grid whose files or checkpoints are not there."""
    h, d = config.hft, config.data
    model_judge = h.judge.partition(":")[0] in judging.MODEL_JUDGES
    files = {"model.path": config.model.path, "data.task": d.task, "data.poison": d.poison, "hft.test": h.test,
             "hft.harmful": h.harmful, "data.safety": d.safety if set(h.defences) - {"none"} else None,
             "hft.judge_model": h.judge_model if model_judge else None}
    absent = [f"{name}={path}" for name, path in files.items() if path is not None and not Path(path).exists()]
    if absent:
        raise ConfigError(f"the hft grid's files are missing: {', '.join(absent)} (paths are relative to the "
                          f"directory you run from; override them as KEY=VALUE)")


def cell_name(poison_ratio: float, defence: str) -> str:
    return f"p{poison_ratio:g}_{defence}"


def run_grid(config: Config, out: storage.PathLike, progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Every cell's result, in grid order (defence-major), computing only the unfinished cells. A cell computed with
    other settings is refused, or with `overwrite` recomputed (`cells.prepare`)."""
    check(config)
    check_files(config)
    out = storage.path(out)
    cells.prepare(grid_cells(config, out), overwrite, f"the hft grid in {out}")
    results = []
    for defence in config.hft.defences:
        for poison_ratio in config.hft.poison_ratios:
            results.append(run_cell(config, out, poison_ratio, defence, progress))
            print(json.dumps(results[-1]))
    return results


def grid_cells(config: Config, out: storage.PathLike) -> list[cells.Cell]:
    """Each cell's parts and settings; a posthoc cell's attack is the `none` cell's training, so that cell's training
    is claimed too when `none` is not a defence of the grid."""
    out = storage.path(out)
    digest = functools.cache(pins.content_digest)  # each data file hashed once
    evaluation = _eval_record(config, digest)
    grid = {cell_name(p, d): _cell(config, out, p, d, digest, evaluation)
            for d in config.hft.defences for p in config.hft.poison_ratios}
    for p in config.hft.poison_ratios if "posthoc" in config.hft.defences else ():
        grid.setdefault(cell_name(p, "none"), _cell(config, out, p, "none", digest, None))
    return list(grid.values())


def _cell(config: Config, out: storage.Path, poison_ratio: float, defence: str, digest, evaluation: dict | None
          ) -> cells.Cell:
    cell = out / cell_name(poison_ratio, defence)
    attack = pins.result_settings(_attack_config(config, poison_ratio, "none" if defence == "posthoc" else defence),
                                  digest)
    if defence == "posthoc":
        posthoc = pins.result_settings(_posthoc_config(config, ATTACKED), digest)  # its base: the cell's
        training = cells.Part("train", {**{f"attack.{k}": v for k, v in attack.items()}, **posthoc},
                              (cell / ATTACKED, cell / "train"))
    else:
        training = cells.Part("train", attack, (cell / "train",))
    return cells.Cell(cell.name, cell / "settings.json",
                      (training, cells.Part("eval", evaluation, (cell / "eval", cell / "result.json"))))


def run_cell(config: Config, out: storage.Path, poison_ratio: float, defence: str, progress: bool = True) -> dict:
    """A cell's result: read back when finished (its settings are checked by `run_grid`), else computed."""
    cell = out / cell_name(poison_ratio, defence)
    result_path = cell / "result.json"
    if result_path.exists():
        return storage.read_json(result_path)
    if defence == "posthoc":
        attacked = _attack(config, out, poison_ratio, "none", progress)
        base = cell / ATTACKED
        if jax.process_index() == 0 and not (base / "config.json").exists():
            export_workdir(attacked, base)
        multihost_utils.sync_global_devices(f"vlguard-jax hft: {base} exported")
        workdir = cell / "train"
        train(_posthoc_config(config, base), workdir, progress)
    else:
        workdir = _attack(config, out, poison_ratio, defence, progress)
    result = {"poison_ratio": poison_ratio, "defence": defence,
              **_evaluate(config, workdir, cell / "eval", progress)}
    if jax.process_index() == 0:
        storage.write_json(result_path, result)
    return result


def _attack(config: Config, out: storage.Path, poison_ratio: float, defence: str, progress: bool) -> storage.Path:
    """The harmful fine-tune of a cell (`none` or `vlguard`), trained (or resumed) into its workdir."""
    workdir = out / cell_name(poison_ratio, defence) / "train"
    train(_attack_config(config, poison_ratio, defence), workdir, progress)
    return workdir


def _attack_config(config: Config, poison_ratio: float, defence: str) -> Config:
    """The user's data with round(p·n) harmful pairs; `vlguard` mixes `hft.safety_count` safety samples in, `none`
    uses no safety data."""
    vlguard = defence == "vlguard"
    data = dataclasses.replace(config.data, mixture="harmful_finetune", poison_ratio=poison_ratio,
                               safety=config.data.safety if vlguard else None,
                               safety_count=config.hft.safety_count if vlguard else None, safety_fraction=None)
    return dataclasses.replace(config, data=data)


def _posthoc_config(config: Config, base: storage.PathLike) -> Config:
    """VLGuard's post-hoc recipe on the attacked model: safety samples + clean task samples, the same training."""
    data = dataclasses.replace(config.data, mixture="posthoc", safety_count=config.hft.safety_count,
                               safety_fraction=None, helpful=config.data.task, helpful_format=config.data.task_format,
                               num_helpful=config.hft.posthoc_helpful)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(base), tokenizer=None,
                                                                 architecture=None), data=data)


def settings(config: Config) -> dict:
    """What the grid's scores depend on besides the models, for summary.json and its table."""
    protocol = eval_settings(config)[0].protocol
    return {**protocol.record(), "overridden": protocol.overridden(), "dtype": config.model.dtype,
            "judge_model": config.hft.judge_model, "test_limit": config.hft.test_limit,
            "harmful_limit": config.hft.harmful_limit, "fa_rule": config.hft.fa_rule}


def _eval_record(config: Config, digest) -> dict:
    """What a cell's scores depend on besides its model: the protocol (by the config key that sets each field), the
    judge's model, the dtype, the test data's content and limits, the accuracy rule."""
    h = config.hft
    keys = {"protocol": "protocol", "template": "data.template", "max_new_tokens": "hft.max_new_tokens",
            "judge": "hft.judge"}
    protocol_fields = {keys.get(k, f"protocol.{k}"): v for k, v in eval_settings(config)[0].protocol.record().items()}
    return {**protocol_fields, "hft.judge_model": None if h.judge in REFUSAL_JUDGES else h.judge_model,
            "model.dtype": config.model.dtype, "hft.test": digest(h.test), "hft.test_limit": h.test_limit,
            "hft.harmful": digest(h.harmful), "hft.harmful_limit": h.harmful_limit, "hft.fa_rule": h.fa_rule}


def eval_settings(config: Config) -> tuple[EvalConfig, JudgeOptions]:
    """The grid's evaluation: the training template, greedy, `hft.max_new_tokens`, the harmful score's judge."""
    h = config.hft
    chosen = protocol("harmful_finetune", template=config.data.template, max_new_tokens=h.max_new_tokens,
                      judge=h.judge)
    return EvalConfig(chosen, h.batch_size), JudgeOptions(h.judge_url, h.judge_model)


def _evaluate(config: Config, workdir: storage.Path, out: storage.Path, progress: bool) -> dict:
    h = config.hft
    eval_config, options = eval_settings(config)
    (accuracy,) = benchmarks.load(config.data.task_format, h.test)
    (harmful,) = benchmarks.load("harmful_score", h.harmful)
    for subset, limit in ((accuracy, h.test_limit), (harmful, h.harmful_limit)):
        subset.prompts = subset.prompts[:limit]
    for prompt in accuracy.prompts:
        prompt.metadata["rule"] = h.fa_rule
    options = dataclasses.replace(options, cache_dir=out / "judge_cache")
    suite = [accuracy, harmful]
    run = {**fingerprint.describe(workdir, [accuracy.name, harmful.name], [h.test, h.harmful], None,
                                  eval_config.protocol, config.model.dtype),
           **judging.record({subset.name: judging.assign(subset, eval_config.protocol) for subset in suite}, options),
           "limits": [h.test_limit, h.harmful_limit], "fa_rule": h.fa_rule}
    mesh = eval_mesh(None, h.batch_size)  # every device of every host, as `vlguard-jax eval` uses them
    model, tokenizer = load_model_and_tokenizer(workdir, jnp.dtype(config.model.dtype), mesh)
    scores = evaluate(model, tokenizer, suite, out, config=eval_config, progress=progress, fingerprint=run,
                      judge_options=options, mesh=mesh)["benchmarks"]
    return {"harmful_score": scores[harmful.name]["value"], "finetune_accuracy": scores[accuracy.name]["value"],
            "judge": scores[harmful.name]["judge"]}
