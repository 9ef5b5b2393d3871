"""The grid's outputs: `summary.json` (`{"settings", "grid": [{poison_ratio, defence, harmful_score,
finetune_accuracy, judge}, …]}`), a markdown table and a plot of HS and FA against the poison ratio per defence."""

from __future__ import annotations

from pathlib import Path

from vlguard_jax import charts, storage
from vlguard_jax.evaluate.judging import REFUSAL_JUDGES
from vlguard_jax.evaluate.protocols import describe

COLUMNS = ("harmful_score", "finetune_accuracy")
TITLES = {"harmful_score": "harmful score %", "finetune_accuracy": "fine-tune accuracy %"}


def judge_note(judge: str) -> str:
    if judge in REFUSAL_JUDGES:
        return (f"Harmful score by the refusal-keyword judge ({judge}), the offline fallback: the % of harmful "
                f"questions not refused, not a moderation model's harm judgment.")
    return f"Harmful score by the {judge} judge: the % of harmful questions whose answers it judges unsafe."


def table(rows: list[dict]) -> str:
    lines = ["| defence | poison ratio | harmful score % | fine-tune accuracy % |", "|---|---|---|---|"]
    lines += [f"| {r['defence']} | {r['poison_ratio']:g} | {r['harmful_score']} | {r['finetune_accuracy']} |"
              for r in rows]
    return "\n".join(lines)


def write(out: storage.PathLike, rows: list[dict], settings: dict) -> str:
    """summary.json, hft.md and hft.png in `out` (a folder or a bucket URI); returns the markdown."""
    out = storage.path(out)
    storage.write_json(out / "summary.json", {"settings": settings, "grid": rows})
    judges = sorted({r["judge"] for r in rows})
    text = "\n".join([describe(settings), "", table(rows), "", *map(judge_note, judges)]) + "\n"
    storage.write_text(out / "hft.md", text)
    _plot(rows, out / "hft.png")
    return text


def _plot(rows: list[dict], path: Path) -> None:
    fig, axes = storage.figure(8, 3.2, columns=2)
    for ax, column in zip(axes, COLUMNS):
        points = {r["defence"]: [] for r in rows}
        for r in rows:
            if r[column] is not None:
                points[r["defence"]].append((r["poison_ratio"], r[column]))
        charts.lines(ax, points, "poison ratio p", TITLES[column])
    axes[0].legend(fontsize=8, title="defence")
    storage.save_figure(fig, path)
