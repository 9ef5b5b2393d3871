"""A grid's cells (an `hft` grid point, a `sweep` run) record what their results depend on, so a re-run never reuses
a result computed with other settings.

A cell is a sequence of parts (its training, then its evaluation), each with the settings it depends on and the
paths it writes; a settings file records {part: settings}. Before a grid computes anything, `prepare` compares
every cell: a part that holds results of other settings (or of unrecorded ones) is refused, naming the cells and
each field (old → new), or with `overwrite` cleared together with every later part of its cell (an evaluation
depends on its training) so that it is recomputed. A part that holds nothing is (re)recorded. Process 0 decides
and writes; the other processes follow its decision.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from vlguard_jax import hosts, storage
from vlguard_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    settings: dict | None  # flat, JSON-able; None: not used by this grid, yet cleared with an earlier part
    paths: tuple[storage.Path, ...]  # the files and folders it writes


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    record: storage.Path  # its settings file
    parts: tuple[Part, ...]


def prepare(cells: Sequence[Cell], overwrite: bool, grid: str) -> None:
    """Refuses (or with `overwrite` clears) every part whose results were computed with other settings, then records
    every cell's settings. `grid` names the grid in messages (e.g. "the hft grid in OUT")."""
    hosts.decide(lambda: _prepare(cells, overwrite, grid))  # every process raises process 0's refusal


def _prepare(cells: Sequence[Cell], overwrite: bool, grid: str) -> None:
    stale = {}  # (part, differences) → cell names
    cleared = []
    for cell in cells:
        recorded = storage.read_json(cell.record) if cell.record.exists() else {}
        for index, part in enumerate(cell.parts):
            differences = _differences(part, recorded)
            if differences:
                stale.setdefault((part.name, differences), []).append(cell.name)
                cleared.append((cell, index))
                break
    if stale and not overwrite:
        lines = [f"  {part} of {', '.join(names)}: {'; '.join(differences)}"
                 for (part, differences), names in stale.items()]
        raise ConfigError(f"{grid} holds results computed with other settings:\n" + "\n".join(lines) +
                          "\nrerun with --overwrite to recompute them (those parts only, and what depends on them), "
                          "or use a new --out")
    for cell, index in cleared:
        for part in cell.parts[index:]:
            for path in part.paths:
                _remove(path)
    for cell in cells:
        recorded = storage.read_json(cell.record) if cell.record.exists() else {}
        updated = {**recorded, **{part.name: _json(part.settings) for part in cell.parts if part.settings is not None}}
        if updated != recorded:
            storage.write_json(cell.record, updated)


def _differences(part: Part, recorded: dict) -> tuple[str, ...]:
    """Why `part` cannot be reused: nothing when it holds no results or holds results of its settings."""
    if part.settings is None or not any(_holds(path) for path in part.paths):
        return ()
    if part.name not in recorded:
        return ("no settings recorded",)
    old, new = recorded[part.name], _json(part.settings)
    old = {**{k: v for k, v in _defaults().items() if k in new}, **old}  # a config field added since: its default
    return tuple(f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
                 if old.get(key) != new.get(key))


def _defaults() -> dict:
    from vlguard_jax.config import Config
    from vlguard_jax.train.pins import flat

    return _json(flat(Config()))


def _json(settings: dict) -> dict:
    return json.loads(json.dumps(settings))  # as read back: lists, not tuples


def _holds(path: storage.Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _remove(path: storage.Path) -> None:
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()
