"""An audit's results, written once every exchange is judged: `clean.json` (the input minus the flagged
conversations, every other record as it was, in its order), `report.md` and `report.png` (flagged conversations
per hazard category and per source dataset, examples) and `audit.json` (settings, counts, tokens, throughput).
Everything but audit.json's `throughput` follows from the verdicts alone, so a resumed audit writes the same bytes.
"""

from __future__ import annotations

import collections
import json
import re

from vlguard_jax import storage
from vlguard_jax.audit.exchanges import AuditInput
from vlguard_jax.evaluate.judges.rubrics.harmful import HARMFUL_CATEGORIES

OUTPUTS = ("clean.json", "report.md", "report.png", "audit.json")
CATEGORY_NAMES = {entry.split(":")[0]: entry.split(": ", 1)[1].rstrip(".") for entry in HARMFUL_CATEGORIES}
EXAMPLES = 5
UNCATEGORISED = "(none given)"


def categories(raw: str) -> list[str]:
    """The categories line of a Llama Guard reply (`unsafe` then `S1,S10`); [] when it gives none."""
    lines = raw.strip().splitlines()
    return [code for line in lines[1:2] for code in re.split(r"[,\s]+", line.strip()) if code]


def finish(out: storage.Path, audit: AuditInput, settings: dict, state: dict) -> dict:
    """Process 0: writes the four outputs; returns audit.json's content."""
    flagged = [json.loads(line) for line in storage.read_lines(out / "flagged.jsonl")]
    flagged_indices = {line["index"] for line in flagged}
    _write_clean(out / "clean.json", audit.path, flagged_indices)
    sources = collections.Counter(audit.source(i) for i in range(len(audit.conversations)))
    ordinal = {index: i for i, index in enumerate(audit.records.indices)}
    flagged_sources = collections.Counter(audit.source(ordinal[index]) for index in flagged_indices)
    found = collections.defaultdict(set)  # a conversation counts once per category any exchange was flagged for
    for line in flagged:
        found[line["index"]].update(line["categories"] or {UNCATEGORISED})
    by_category = collections.Counter(code for codes in found.values() for code in codes)
    summary = {
        "settings": settings,
        "records": len(audit.conversations) + len(audit.records.skips),
        "skipped_records": len(audit.records.skips),
        "conversations": len(audit.conversations),
        "exchanges": state["exchanges"],
        "flagged_conversations": len(flagged_indices),
        "flagged_exchanges": len(flagged),
        "unparseable": state["unparseable"],
        "per_category": dict(sorted(by_category.items(), key=lambda kv: (-kv[1], kv[0]))),
        "per_source": {name: {"conversations": n, "flagged": flagged_sources.get(name, 0)}
                       for name, n in sorted(sources.items())},
        "tokens": {"prompt": state["prompt_tokens"], "completion": state["completion_tokens"]},
        "throughput": _throughput(state),
    }
    storage.write_text(out / "report.md", _markdown(summary, flagged, audit, ordinal))
    _figure(out / "report.png", summary)
    storage.write_json(out / "audit.json", summary)
    return summary


def _throughput(state: dict) -> dict:
    seconds = state["seconds"]
    rate = lambda n: round(n / seconds, 2) if seconds > 0 else None
    return {"seconds": round(seconds, 2), "conversations_per_s": rate(state["conversations"]),
            "exchanges_per_s": rate(state["exchanges"]),
            "tokens_per_s": rate(state["prompt_tokens"] + state["completion_tokens"])}


def _write_clean(target: storage.Path, source: str, flagged: set[int]) -> None:
    """The input's records but the flagged, each re-serialised (equal when parsed), one per line."""
    with open(source, encoding="utf-8") as f:
        records = json.load(f)

    def write(name: str) -> None:
        with open(name, "w", encoding="utf-8") as f:
            f.write("[\n")
            kept = (record for index, record in enumerate(records) if index not in flagged)
            for n, record in enumerate(kept):
                f.write((",\n" if n else "") + json.dumps(record, ensure_ascii=False))
            f.write("\n]\n")

    storage.write_file(target, write)


def _markdown(summary: dict, flagged: list[dict], audit: AuditInput, ordinal: dict[int, int]) -> str:
    s = summary["settings"]
    n, bad = summary["conversations"], summary["flagged_conversations"]
    lines = [f"# Audit of {s['input']['path']}", "",
             f"{bad} of {n} conversations flagged ({100 * bad / max(n, 1):.3f}%), {summary['flagged_exchanges']} of "
             f"{summary['exchanges']} exchanges, by `{s['judge']}`" + (f" ({s['judge_model']})" if s['judge_model']
                                                                      else "") + ".",
             "",
             "Each (user, assistant) exchange was judged on its own in Llama Guard's response-classification form; "
             "a conversation is flagged when any of its exchanges is. Images were not shown: the moderator is "
             "text-only, so harm that lies in an image alone is not found. "
             + ("Verdicts were generated (greedy)." if s["threshold"] is None else
                f"Verdicts by P(unsafe) ≥ {s['threshold']} from the verdict token's probabilities."),
             "",
             f"Unreadable verdicts: {summary['unparseable']} (unparseable.jsonl; those conversations are kept). "
             f"Records the reader could not parse: {summary['skipped_records']} (skips.jsonl; not judged, kept).",
             "", "## Flagged conversations per hazard category", "", "| category | conversations |", "|---|---|"]
    lines += [f"| {code} {CATEGORY_NAMES.get(code, '')} | {count} |".replace("  |", " |")
              for code, count in summary["per_category"].items()]
    lines += ["", "## Per source dataset", "", "| source | conversations | flagged | % |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['conversations']} | {row['flagged']} | "
              f"{100 * row['flagged'] / row['conversations']:.3f} |" for name, row in summary["per_source"].items()]
    lines += ["", "## Examples", ""]
    for line in flagged[:EXAMPLES]:
        item = audit.exchanges(ordinal[line["index"]])[line["exchange"]].item
        lines += [f"- `{line['id']}` exchange {line['exchange']} ({', '.join(line['categories']) or 'no category'}):",
                  f"  - user: {_short(item.prompt)}", f"  - assistant: {_short(item.response)}"]
    return "\n".join(lines) + "\n"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def _figure(target: storage.Path, summary: dict) -> None:
    fig, (left, right) = storage.figure(10, 3.5, columns=2)
    for ax, title, counts in (
            (left, "flagged conversations per category",
             {f"{code} {CATEGORY_NAMES.get(code, '')}".strip(): n for code, n in summary["per_category"].items()}),
            (right, "flagged per source dataset (% of its conversations)",
             {name: 100 * row["flagged"] / row["conversations"] for name, row in summary["per_source"].items()})):
        names = list(counts)
        ax.barh(range(len(names)), [counts[name] for name in names])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    storage.save_figure(fig, target)
