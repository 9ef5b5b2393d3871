"""VLGuard's Table 1, the forgetting table: base LLMs beside the VLLMs tuned from them, on text-only benchmarks.

VLLM instruction tuning erodes the LLM's safety; the table shows it as AdvBench (vanilla, suffix injection) and
XSTest unsafe ASR, XSTest safe compliance and language helpfulness (the mean of MMLU and AlpacaEval) per model.
Each model is evaluated through `eval`'s own code path (`checkpoint_eval`) into OUT/NAME, so every row is a plain
`eval` directory: its cells equal a separate `eval` run's, it resumes after a kill, and it refuses results of other
settings. Every setting is checked before the first model loads: a mistake in the last row costs seconds, not the
hours of the rows before it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import jax

from vlguard_jax import hosts, storage
from vlguard_jax.config import ConfigError, config_from_dict, load_config
from vlguard_jax.evaluate import benchmarks, judging
from vlguard_jax.evaluate.checkpoint_eval import evaluate_checkpoint, run_record
from vlguard_jax.evaluate.fingerprint import check
from vlguard_jax.evaluate.forgetting_report import write_table
from vlguard_jax.evaluate.protocols import Protocol, protocol
from vlguard_jax.train.setup import model_config
from vlguard_jax.train.trained import is_workdir

BENCHMARK_FILES = {  # each benchmark's file under a benchmarks root laid out as ../shared/benchmarks
    "advbench": "advbench/harmful_behaviors.csv",
    "xstest": "xstest/xstest_prompts.csv",
    "mmlu": "mmlu",
    "alpaca_eval": "alpaca_eval/gpt4_1106_preview_model_outputs.json",
}
KINDS = ("llm", "vllm")
# The paper's setting per model family (its config's layout): VLGuard's evaluation (greedy, 256 new tokens) with the
# model's own system prompt, Vicuna's (vicuna_v1) for a base LLM and the VLLM's as VLGuard evaluates it otherwise.
# (preset, template replacing the preset's, or None). A layout does not name its decoder: a Mistral LLaVA-NeXT gets
# `llava_next` (Vicuna's prompt) here; its own `llava_next_mistral` only where that preset is named.
PROTOCOL_OF_LAYOUT = {"llama": ("vlguard", "vicuna_v1"), "llava": ("vlguard", None),
                      "minigpt_v2": ("vlguard_minigptv2", None), "llava_next": ("llava_next", None),
                      "llava_onevision": ("onevision", None)}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class Model:
    name: str  # its row, and its folder OUT/NAME
    path: str | os.PathLike  # a checkpoint directory or a training workdir
    kind: str  # llm (a text-only LLaMA) or vllm, as given: a checkpoint of the other kind is refused

    @property
    def flag(self) -> str:
        """The model as its flag gave it, so an error names what to change."""
        return f"--{self.kind} {self.name}={self.path}"


def benchmark_files(root: str | os.PathLike | None, given: Mapping[str, str | os.PathLike],
                    names: Sequence[str] = tuple(BENCHMARK_FILES)) -> dict[str, Path]:
    """The file of each benchmark in `names`: `given`'s, else its place under `root` (`BENCHMARK_FILES`)."""
    unknown = sorted(set(names) - set(BENCHMARK_FILES)) + sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"the table reads {', '.join(names)} (of {', '.join(BENCHMARK_FILES)}); not "
                          f"{', '.join(unknown)}")
    files = {}
    for name in names:
        if name not in given and root is None:
            raise ConfigError(f"no file for {name}: give a benchmarks root (--data ROOT) or --data {name}=PATH")
        files[name] = Path(given[name]) if name in given else Path(root) / BENCHMARK_FILES[name]
        if not files[name].exists():
            raise ConfigError(f"{files[name]}: not found ({name}; --data {name}=PATH to give it, or leave it out of "
                              f"--benchmarks)")
    return files


def model_layout(model: Model) -> str:
    """The model's family from its configs alone (no weights read): `llama` (text-only) or a VLLM layout; a
    directory that is no model, or a model of the other kind than given, is refused."""
    if model.kind not in KINDS:
        raise ConfigError(f"{model.name}: kind {model.kind!r} is not one of {', '.join(KINDS)}")
    path = storage.path(model.path)
    if is_workdir(path):
        config = load_config(path / "config.yaml")
    elif (path / "config.json").exists():
        config = config_from_dict({"model": {"path": os.fspath(model.path)}}, str(path / "config.json"))
    else:
        raise ConfigError(f"{model.flag}: not a checkpoint directory (no config.json) nor a training workdir "
                          f"(config.yaml and checkpoints/)")
    layout = model_config(config).layout
    if (layout == "llama") != (model.kind == "llm"):
        what = "a text-only language model" if layout == "llama" else f"a vision-language model ({layout})"
        other = "llm" if layout == "llama" else "vllm"
        raise ConfigError(f"{model.flag}: it is {what}; give it as --{other} {model.name}={model.path}")
    return layout


def layout_protocol(layout: str, max_new_tokens: int | None = None) -> Protocol:
    """The protocol of a model of `layout` (`PROTOCOL_OF_LAYOUT`); `max_new_tokens` replaces the preset's."""
    preset, template = PROTOCOL_OF_LAYOUT[layout]
    return protocol(preset, template=template, max_new_tokens=max_new_tokens)


def forgetting_table(models: Sequence[Model], files: Mapping[str, str | os.PathLike], out: storage.PathLike,
                     judge_options: judging.JudgeOptions, *, dtype: str = "bfloat16", batch_size: int | None = None,
                     mesh: str | None = None, max_new_tokens: int | None = None, overwrite: bool = False) -> dict:
    """Evaluates each model into OUT/NAME and writes OUT/table1.json and OUT/table1.md (process 0); returns the
    table (`forgetting_report.write_table`). `files`: benchmark name → its file (`benchmark_files`)."""
    out = storage.path(out)
    names = [m.name for m in models]
    if not models:
        raise ConfigError("the table needs at least one model (--llm NAME=DIR, --vllm NAME=DIR)")
    for name in names:
        if not _NAME.fullmatch(name) or name == "judge_cache" or names.count(name) > 1:
            raise ConfigError(f"model name {name!r}: each names a folder of OUT, so it must be unique, not "
                              f"'judge_cache', and letters, digits, '.', '_' or '-'")
    protocols = {m.name: layout_protocol(model_layout(m), max_new_tokens) for m in models}
    suite = [b for name, path in files.items() for b in benchmarks.load(name, path)]
    labels, paths = list(files), list(files.values())  # unsampled benchmarks: `eval`'s labels are their names
    for model in models:  # every refusal before the first model loads
        for benchmark in suite:
            judge = judging.assign(benchmark, protocols[model.name])
            if judge is not None:
                judging.check(judge, judge_options, f"{benchmark.name} (or leave it out of --benchmarks)")
        if not overwrite:
            run = run_record(model.path, suite, labels, paths, protocols[model.name], judge_options, dtype=dtype)
            hosts.decide(lambda: check(out / model.name, run))
    summaries = [evaluate_checkpoint(m.path, suite, labels, paths, out / m.name, protocols[m.name], judge_options,
                                     dtype=dtype, batch_size=batch_size, mesh=mesh, overwrite=overwrite)
                 for m in models]
    rows = [(m.name, m.kind, os.fspath(m.path), s) for m, s in zip(models, summaries)]
    return write_table(out, files, rows, write=jax.process_index() == 0)
