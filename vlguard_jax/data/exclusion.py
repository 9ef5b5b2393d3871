"""Samples a run leaves out before its mixture is drawn, and the record of them in mixture.json.

- `data.exclude`: a file of sample ids removed from every source the mixture uses. VLGuard's "Clean" models are
  LLaVA-1.5 trained on llava_v1_5_mix665k minus the conversations Llama Guard flagged; `vlguard-jax data audit`
  writes those to OUT/flagged.jsonl. Ids matching no sample are counted; a list matching none belongs to other data.
- `data.safety_exclude_categories`: VLGuard harm categories removed from the safety data (the paper's §4.4: a
  category held out of training is still refused), read from the tokenized store's category column.
mixture.json's "excluded" holds the exclude file's fingerprint, the categories, the ids removed per source and the
unmatched count. A resume replays the recorded ids; it refuses an exclude file whose content changed (as it refuses a
changed source), and the categories are pinned with the config (`train.pins`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from vlguard_jax.config import DataConfig
from vlguard_jax.data import harm_categories
from vlguard_jax.data.mixture import check_sources, fingerprint
from vlguard_jax.data.sources import DataError
from vlguard_jax.data.store import Store

FORMS = ('a .jsonl of objects with an "id" (vlguard-jax data audit\'s flagged.jsonl), a .json list of ids or '
         '{"ids": [...]}, or a text file of one id per line')


def read_ids(path: str | Path) -> list[str]:
    """The distinct ids the file lists, in file order (an audit lists one id per flagged exchange)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data.exclude: {path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"data.exclude: {path}: not UTF-8 text ({e}); give {FORMS}") from None
    if path.suffix == ".jsonl":
        ids = _jsonl_ids(path, text)
    elif path.suffix == ".json":
        ids = _json_ids(path, text)
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def _jsonl_ids(path: Path, text: str) -> list[str]:
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"data.exclude: {path}: line {number} is not valid JSON ({e.msg}); fix that line (each "
                            f"line is one object with the sample's \"id\")") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise DataError(f"data.exclude: {path}: line {number} is not an object with a string \"id\" "
                            f"({line.strip()[:80]}); fix that line (each line names one sample by its \"id\")")
        ids.append(record["id"])
    return ids


def _json_ids(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"data.exclude: {path}: not valid JSON (line {e.lineno}: {e.msg}); give {FORMS}") from None
    ids = data.get("ids") if isinstance(data, dict) else data
    if not isinstance(ids, list):
        raise DataError(f"data.exclude: {path}: a .json exclude file is a list of ids or an object with an \"ids\" "
                        f"list; give {FORMS}")
    for index, value in enumerate(ids):
        if not isinstance(value, str):
            raise DataError(f"data.exclude: {path}: entry {index} is {type(value).__name__} {value!r}, not a sample "
                            f"id; list ids as strings, as the data's readers name them")
    return ids


def listed(config: DataConfig, formats: dict[str, str]) -> list[str] | None:
    """The ids `data.exclude` lists (None without one), after checking that the categories can apply: before any
    tokenizing, so a bad request fails at once."""
    if config.safety_exclude_categories:
        if "safety" not in formats:
            raise DataError(f"data.safety_exclude_categories removes safety records, but data.mixture="
                            f"{config.mixture} draws no safety data; unset it or use a mixture with safety data")
        if formats["safety"] != "vlguard":
            raise DataError(f"data.safety_exclude_categories names VLGuard harm categories, but the safety data "
                            f"{config.safety} is read as {formats['safety']}, which has none; unset it or give "
                            f"vlguard-format safety data")
    return None if config.exclude is None else read_ids(config.exclude)


def excluded(config: DataConfig, ids: list[str] | None, stores: dict[str, Store]) -> dict | None:
    """mixture.json's "excluded" entry: {"file": fingerprint or None, "categories", "removed": {source: ids in file
    order}, "unmatched": listed ids that name no sample}; None when the config excludes nothing. `ids`: `listed`'s."""
    if ids is None and not config.safety_exclude_categories:
        return None
    removed = {name: set(ids or ()).intersection(store.ids) for name, store in stores.items()}
    matched = set().union(*removed.values())
    if ids and not matched:
        sources = ", ".join(f"{name} {store.meta['built_from']}" for name, store in stores.items())
        raise DataError(f"data.exclude: none of the {len(ids)} ids in {config.exclude} names a sample of this "
                        f"mixture's data ({sources}; first ids: {ids[:5]}): the list belongs to other data; audit "
                        f"these sources (vlguard-jax data audit) or fix data.exclude")
    if config.safety_exclude_categories:
        removed["safety"] |= _in_categories(stores["safety"], config.safety_exclude_categories)
    return {"file": None if config.exclude is None else fingerprint(config.exclude),
            "categories": list(config.safety_exclude_categories),
            "removed": {name: [i for i in stores[name].ids if i in drop] for name, drop in removed.items()},
            "unmatched": len(set(ids or ()) - matched)}


def _in_categories(store: Store, values: Sequence[str]) -> set[str]:
    harm_categories.check(values, store.categories, f"data.safety_exclude_categories ({store.meta['built_from']})")
    return {i for i, label in zip(store.ids, store.categories) if harm_categories.named(values, label)}


def check_resume(recorded: dict | None, exclude: str | None) -> None:
    """Refuses a resume whose exclude file is not the one its mixture was drawn with (added, dropped or changed)."""
    file = (recorded or {}).get("file")
    if file is None and exclude is not None:
        raise DataError(f"data.exclude: {exclude}: this run's mixture was drawn without an exclude list; unset "
                        f"data.exclude or start a new --workdir")
    if file is not None and exclude is None:
        raise DataError(f"data.exclude is unset, but this run's mixture was drawn without the ids listed in "
                        f"{file['path']}; set data.exclude to that file or start a new --workdir")
    if file is not None:
        check_sources({"exclude": file}, {"exclude": exclude})
