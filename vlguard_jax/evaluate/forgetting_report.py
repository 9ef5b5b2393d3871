"""The forgetting table in VLGuard Table 1's layout, from each model's `summary.json` content: one row per model,
a column per text-only subset, and language helpfulness = mean(MMLU, AlpacaEval).

A cell keeps its N (and metric, judge, skips) beside the value: two rows are comparable only over the same prompts.
A missing score (a benchmark left out, a win rate with no decided judgment) is n/a, never zero, and so is a
helpfulness whose parts are not both there.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from vlguard_jax import storage
from vlguard_jax.evaluate.protocols import describe

COLUMNS = {  # subset → Table 1's column
    "advbench": "AdvBench vanilla ASR", "advbench_suffix": "AdvBench suffix ASR",
    "xstest_safe": "XSTest safe compliance", "xstest_unsafe": "XSTest unsafe ASR",
    "mmlu": "MMLU accuracy", "alpaca_eval": "AlpacaEval win rate",
}
HELPFULNESS = ("mmlu", "alpaca_eval")  # language helpfulness: their mean
CELL_KEYS = ("value", "n", "metric", "judge", "skipped", "undecided")  # what a cell keeps of its summary score


def row(model: str, kind: str, path: str, summary: dict) -> dict:
    """One model's row: its protocol as run (`summary["settings"]`) and a cell per `COLUMNS` subset."""
    scores = summary["benchmarks"]
    cells = {subset: {k: scores[subset][k] for k in CELL_KEYS if k in scores[subset]} if subset in scores
             else {"value": None, "n": None} for subset in COLUMNS}
    parts = [cells[subset]["value"] for subset in HELPFULNESS]
    cells["language_helpfulness"] = {"value": None if None in parts else sum(parts) / len(parts),
                                     "of": list(HELPFULNESS)}
    return {"model": model, "kind": kind, "path": path, "protocol": summary["settings"], "cells": cells}


def markdown(table: dict) -> str:
    """The table, an N row (each column's N; per row, in order, where the rows differ), and each protocol."""
    rows = table["rows"]
    header = ["model", "kind", "protocol", *(f"{title} %" for title in COLUMNS.values()), "language helpfulness %"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(COLUMNS) + 1)]
    for r in rows:
        values = [_number(r["cells"][subset]["value"]) for subset in (*COLUMNS, "language_helpfulness")]
        lines.append(f"| {r['model']} | {r['kind']} | {_short(r['protocol'])} | " + " | ".join(values) + " |")
    counts = []
    for subset in COLUMNS:
        ns = ["–" if r["cells"][subset]["n"] is None else str(r["cells"][subset]["n"]) for r in rows]
        counts.append(ns[0] if len(set(ns)) == 1 else " / ".join(ns))
    lines.append("| N | | | " + " | ".join(counts) + " | |")
    lines += ["", "Language helpfulness: the mean of MMLU and AlpacaEval (n/a when either is missing). "
                  "N: the prompts each cell scores.", ""]
    protocols = {_short(r["protocol"]): describe(r["protocol"]) for r in rows}
    lines += [f"- {short}: {text}" for short, text in protocols.items()]
    return "\n".join(lines) + "\n"


def write_table(out: storage.PathLike, files: Mapping[str, str | os.PathLike],
                rows: Sequence[tuple[str, str, str, dict]], write: bool = True) -> dict:
    """`{"benchmarks": {name: file}, "rows": [row(...)]}` from (model, kind, path, summary) tuples; with `write`,
    also OUT/table1.json and OUT/table1.md."""
    table = {"benchmarks": {name: os.fspath(path) for name, path in files.items()},
             "rows": [row(*entry) for entry in rows]}
    if write:
        out = storage.path(out)
        storage.write_json(out / "table1.json", table)
        storage.write_text(out / "table1.md", markdown(table))
    return table


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _short(settings: dict) -> str:
    """A protocol's name with the fields it changed, e.g. `vlguard (template vicuna_v1)`."""
    changed = ", ".join(f"{k} {settings[k]}" for k in settings.get("overridden", ()))
    return settings["protocol"] + (f" ({changed})" if changed else "")
