"""The paper's held-out-category setting (VLGuard §4.4, Fig. 5): models fine-tuned without one harm category's safety
data, scored on the Unsafe subset per harm category of the test data, so the held-out category's ASR is read beside
the others'. Scores come from the Unsafe subset's judged responses by the benchmark's own scoring (`report.score`):
one judgment, split by the `category/subcategory` label the test record gives its image."""

from __future__ import annotations

import json
from pathlib import Path

from vlguard_jax import storage
from vlguard_jax.data import harm_categories
from vlguard_jax.data.sources import DataError
from vlguard_jax.evaluate.report import score

UNSAFES = "vlguard_unsafes"  # the `vlguard` benchmark's Unsafe subset


def unsafe_asr_by_category(eval_dir: storage.PathLike, test_json: str | Path) -> dict[str, dict]:
    """{label: {"n", "value"}}: ASR % on the Unsafe subset per harm category label of `test_json`'s records, from
    EVAL_DIR/vlguard_unsafes/responses.jsonl (an evaluation of that test file)."""
    labels = {str(r["id"]): harm_categories.of_record(r) for r in json.loads(Path(test_json).read_text())
              if isinstance(r, dict) and "id" in r and not r.get("safe")}
    path = storage.path(eval_dir) / UNSAFES / "responses.jsonl"
    responses = [json.loads(line) for line in storage.read_lines(path)]
    unknown = [r["id"] for r in responses if r["id"] not in labels]
    if unknown:
        raise DataError(f"{path}: responses to {unknown[:3]} name no unsafe image of {test_json}: they answer another "
                        f"test file; evaluate on {test_json} again (sweep --overwrite)")
    return score([{**r, "category": labels[r["id"]]} for r in responses], "asr").get("categories", {})


def table(rows: list[dict], holdout: str) -> list[str]:
    """Markdown: one line per sweep row, one column per harm category, the held-out one marked."""
    labels = sorted({label for row in rows for label in row["unsafe_asr_by_category"]})
    heads = [f"{label} (held out)" if harm_categories.named([holdout], label) else label for label in labels]
    lines = [f"Unsafe ASR % per harm category; held out of the safety data: {holdout}", "",
             "| safety samples | fraction | seed | " + " | ".join(heads) + " |", "|" + "---|" * (3 + len(labels))]
    for row in rows:
        scores = row["unsafe_asr_by_category"]
        lines.append(f"| {row['safety_samples']} | {row['safety_fraction']:g} | {row['seed']} | "
                     + " | ".join(str(scores.get(label, {}).get("value", "n/a")) for label in labels) + " |")
    return lines
