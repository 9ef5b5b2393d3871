"""`run_audit`: judge every exchange of an instruction file with a moderation judge, writing as it goes.

OUT (any `storage` path) holds
- `run.json`: what the verdicts depend on (the input's sha256, format, judge, judge model, threshold); a re-run
  with other settings is refused, not mixed in (`overwrite` starts over);
- `flagged.jsonl` / `unparseable.jsonl`: one line per exchange judged unsafe / whose verdict could not be read,
  appended a chunk of conversations at a time, then `progress.json` (conversations done, tokens, seconds) written
  whole. A killed audit re-run drops lines past the recorded progress and goes on from there, so its files equal
  an uninterrupted run's; `skips.jsonl`: records the reader could not parse (not judged, kept in clean.json);
- at the end, `clean.json`, `report.md`, `report.png` and `audit.json` (`report`).

Model judges (llama_guard, beaver_dam) run on the mesh on every process: each process reads the input, all judge
the same rows together (each device its rows), and process 0 alone reads and writes OUT (`hosts.decide`). A network
judge (openai) runs on process 0 alone, so each request is paid for once; its replies are cached in OUT/judge_cache
by default, so judging again sends nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
from jax.sharding import Mesh

from vlguard_jax import hosts, storage
from vlguard_jax.audit import report
from vlguard_jax.audit.exchanges import AuditInput, Exchange, read_input
from vlguard_jax.config import ConfigError
from vlguard_jax.data.mixture import fingerprint
from vlguard_jax.evaluate import judging

OUTPUTS = ("flagged.jsonl", "unparseable.jsonl", "progress.json", "skips.jsonl", *report.OUTPUTS)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    batch_size: int = 8  # rows a model judge runs at once (a multiple of the mesh's data × fsdp devices)
    chunk: int = 512  # conversations between two writes of the progress
    max_unparseable: float = 0.01  # exchanges whose verdict cannot be read, a fraction of all: past it, stop


def run_audit(data: str | os.PathLike, format: str, out: storage.PathLike, judge: str,
              options: judging.JudgeOptions, *, config: AuditConfig = AuditConfig(), mesh: Mesh | None = None,
              overwrite: bool = False, progress: bool = True) -> dict | None:
    """Audits `data` into `out`; returns audit.json's content (None on the processes other than 0 of a network
    judge's multi-process job, which leave the work to process 0)."""
    out = storage.path(out)
    name, _, rubric = judge.partition(":")
    if name not in (*judging.MODEL_JUDGES, "openai") or rubric not in ("", "harmful"):
        raise ConfigError(f"--judge {judge} does not decide harm; audit with llama_guard, beaver_dam or "
                          f"openai (its harmful rubric: Llama Guard's prompt)")
    judging.check(judge, options, "--judge")
    on_mesh = name in judging.MODEL_JUDGES
    if not on_mesh:
        if jax.process_index() != 0:
            return None
        options = dataclasses.replace(options, cache_dir=options.cache_dir or out / "judge_cache")
    decide = hosts.decide if on_mesh else (lambda compute: compute())
    settings = _settings(data, format, judge, options)
    audit = read_input(data, format)
    state = decide(lambda: _resume(out, settings, audit, overwrite))
    writer = jax.process_index() == 0
    todo = range(state["conversations"], len(audit.conversations))
    if todo:
        built = judging.build(judge, options, mesh, config.batch_size)
        total = sum(len(c.turns) // 2 for c in audit.conversations)
        from tqdm import tqdm

        with tqdm(total=len(todo), desc="audit", unit="conv", disable=not (progress and writer)) as bar:
            for start in range(todo.start, todo.stop, config.chunk):
                ordinals = range(start, min(start + config.chunk, todo.stop))
                state = _judge_chunk(built, audit, ordinals, state, out if writer else None)
                if state["unparseable"] > config.max_unparseable * total:
                    raise ConfigError(f"{out / 'unparseable.jsonl'}: {state['unparseable']} of the {total} "
                                      f"exchanges got a verdict that could not be read, more than "
                                      f"{config.max_unparseable:.1%}; check the judge (its replies are in that file)")
                bar.update(len(ordinals))
    return decide(lambda: report.finish(out, audit, settings, state))


def flagged_ids(out: storage.PathLike) -> list[str]:
    """The flagged conversations' ids, in file order, once each."""
    lines = storage.read_lines(storage.path(out) / "flagged.jsonl")
    return list(dict.fromkeys(json.loads(line)["id"] for line in lines))


def _settings(data, format: str, judge: str, options: judging.JudgeOptions) -> dict:
    content = fingerprint(data)
    on_mesh = judge.partition(":")[0] in judging.MODEL_JUDGES
    return {"input": {"path": str(data), "sha256": content["sha256"], "size": content["size"]}, "format": format,
            "judge": judge, "judge_model": os.path.abspath(options.model) if on_mesh else options.model,
            "threshold": options.threshold, "dtype": options.dtype if on_mesh else None, "unit": "exchange",
            "images_shown": False}


def _resume(out: storage.Path, settings: dict, audit: AuditInput, overwrite: bool) -> dict:
    """Process 0: the progress to go on from, after checking the settings and dropping lines past it."""
    run = out / "run.json"
    if overwrite:
        for name in ("run.json", *OUTPUTS):
            if (out / name).exists():
                (out / name).unlink()
    if run.exists():
        recorded = storage.read_json(run)
        where = lambda s: {**s, "input": {k: v for k, v in s["input"].items() if k != "path"}}  # a moved input: fine
        differ = [k for k in sorted(set(recorded) | set(settings)) if where(recorded).get(k) != where(settings).get(k)]
        if differ:
            details = "; ".join(f"{k}: {recorded.get(k)!r} → {settings.get(k)!r}" for k in differ)
            raise ConfigError(f"{out} holds an audit with other settings ({details}); use another --out, or "
                              f"--overwrite to start over")
    else:
        storage.write_json(run, settings)
    state = storage.read_json(out / "progress.json") if (out / "progress.json").exists() else {
        "conversations": 0, "next_index": 0, "exchanges": 0, "flagged_exchanges": 0, "unparseable": 0,
        "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
    for name in ("flagged.jsonl", "unparseable.jsonl"):  # without the lines of a chunk whose progress was not written
        path = out / name
        lines = path.read_text().split("\n")[:-1] if path.exists() else []
        storage.write_text(path, "".join(line + "\n" for line in lines if _index(line) < state["next_index"]))
    storage.write_text(out / "skips.jsonl", "".join(json.dumps(dataclasses.asdict(s)) + "\n"
                                                    for s in audit.records.skips))
    return state


def _index(line: str) -> int:
    try:
        return json.loads(line)["index"]
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn line: dropped


def _judge_chunk(judge, audit: AuditInput, ordinals: range, state: dict, out: storage.Path | None) -> dict:
    """Judges the conversations `ordinals`; `out` (process 0): where their lines and the new progress go."""
    exchanges = [e for ordinal in ordinals for e in audit.exchanges(ordinal)]
    order = sorted(range(len(exchanges)), key=lambda i: len(exchanges[i].item.prompt) + len(exchanges[i].item.response))
    began = time.perf_counter()
    judged = judge.judge([exchanges[i].item for i in order])  # by length: batches of alike lengths pad less
    judgments = [None] * len(exchanges)
    for i, judgment in zip(order, judged):
        judgments[i] = judgment
    seconds = time.perf_counter() - began
    flagged = [_line(e, j) for e, j in zip(exchanges, judgments) if j.unsafe]
    unreadable = [_line(e, j) for e, j in zip(exchanges, judgments) if j.unsafe is None]
    tokens = [j.tokens or (0, 0) for j in judgments]
    following = ordinals.stop
    state = {**state, "conversations": following,
             "next_index": audit.records.indices[following] if following < len(audit.conversations) else 1 << 62,
             "exchanges": state["exchanges"] + len(exchanges),
             "flagged_exchanges": state["flagged_exchanges"] + len(flagged),
             "unparseable": state["unparseable"] + len(unreadable),
             "prompt_tokens": state["prompt_tokens"] + sum(t[0] for t in tokens),
             "completion_tokens": state["completion_tokens"] + sum(t[1] for t in tokens),
             "seconds": state["seconds"] + seconds}
    if out is not None:
        storage.append_lines(out / "flagged.jsonl", map(json.dumps, flagged))
        storage.append_lines(out / "unparseable.jsonl", map(json.dumps, unreadable))
        storage.write_json(out / "progress.json", state)
    return state


def _line(exchange: Exchange, judgment) -> dict:
    line = {"index": exchange.index, "id": exchange.id, "exchange": exchange.number,
            "categories": report.categories(judgment.raw), "label": judgment.label, "raw": judgment.raw}
    if judgment.probability is not None:
        line["probability"] = round(judgment.probability, 6)
    return line
