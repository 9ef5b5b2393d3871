"""`OUT/run.json`: what an evaluation directory holds results of, so a resumed `eval` cannot mix in other runs.

`evaluate` resumes by skipping finished prompt ids; without a record, a re-run with another model, data file or
protocol would append its answers to the old ones. The fingerprint holds what changes the answers (every field of
the protocol, the dtype; not the batch size, which does not); a mismatch is refused, or with `overwrite` the old
results are cleared first.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from vlguard_jax import storage
from vlguard_jax.config import ConfigError
from vlguard_jax.data.mixture import fingerprint as file_fingerprint
from vlguard_jax.evaluate.protocols import Protocol

NAME = "run.json"
REPORT_FILES = ("summary.json", "report.md", "summary.png")  # written by report.write_report
RESULT_FILES = ("responses.jsonl", "skips.jsonl", "figure.png")  # per benchmark directory (runner, report)


def model_identity(path: str | os.PathLike) -> str:
    """Cheap: a training workdir's newest checkpoint step, or a checkpoint directory's config.json sha256."""
    path = storage.path(path)
    checkpoints = path / "checkpoints"
    if (path / "config.yaml").exists() and checkpoints.is_dir():
        steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
        return f"checkpoint step {max(steps)}" if steps else "no checkpoint"
    if (path / "config.json").exists():
        return f"config.json sha256 {hashlib.sha256((path / 'config.json').read_bytes()).hexdigest()[:16]}"
    return "unknown"


def describe(model: str | os.PathLike, benchmarks: Sequence[str], data: Sequence[str | os.PathLike],
             images: str | os.PathLike | None, protocol: Protocol, dtype: str,
             image_override: str | os.PathLike | None = None) -> dict:
    """The fingerprint of one `eval` invocation (paths resolved: `./ckpt` and `ckpt` are one model). An image
    override (`evaluate.image_override`) is recorded by path and content: another image is another evaluation."""
    return {
        "model": resolved(model), "model_identity": model_identity(model),
        "benchmarks": list(benchmarks), "data": [str(Path(p).resolve()) for p in data],
        "data_sha256": [sha256(p)[:16] for p in data],
        "images": resolved(images) if images and not image_override else None,  # an override is every image
        "image_override": resolved(image_override) if image_override else None,
        "image_override_sha256": sha256(image_override)[:16] if image_override else None,
        **protocol.record(), "dtype": dtype,
    }


def resolved(path: str | os.PathLike) -> str:
    """A local path made absolute (`./ckpt` and `ckpt` are one model); a URI as it is."""
    return str(Path(path).resolve()) if storage.is_local(path) else os.fspath(path)


def sha256(path: str | os.PathLike) -> str:
    """A data file's sha256 (a local file, or an object in a bucket); for a local data directory (MMLU's), that of
    its files' relative paths and sha256s."""
    if not storage.is_local(path):
        return hashlib.sha256(storage.path(path).read_bytes()).hexdigest()
    path = Path(path)
    if not path.is_dir():
        return file_fingerprint(path)["sha256"]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(path)} {file_fingerprint(p)['sha256']}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def check(out_dir: str | os.PathLike, fingerprint: dict, name: str = NAME, what: str = "an evaluation") -> bool:
    """Whether OUT already holds results of `fingerprint` (recorded in OUT/`name`); raises when it holds results of
    anything else (`what`: of what kind, for the message)."""
    out_dir = storage.path(out_dir)
    path = out_dir / name
    if not path.exists():
        if name == NAME and _results(out_dir):
            raise ConfigError(f"{out_dir}: holds evaluation results but no {NAME} to say of what; use another "
                              f"--out or --overwrite")
        return False
    try:
        held = storage.read_json(path)
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable ({e}); use another --out or --overwrite") from e
    fingerprint = json.loads(json.dumps(fingerprint))  # as read back: lists, not tuples
    differ = [k for k in {**held, **fingerprint} if held.get(k) != fingerprint.get(k)]
    if differ:
        details = "; ".join(f"{k}: {held.get(k)!r} → {fingerprint.get(k)!r}" for k in differ)
        raise ConfigError(f"{path}: this directory holds {what} with other settings ({details}); "
                          f"use another --out or --overwrite")
    return True


def claim(out_dir: str | os.PathLike, fingerprint: dict, name: str = NAME, what: str = "an evaluation") -> None:
    """Makes OUT hold results of `fingerprint` only: records it on first use, refuses another one."""
    if not check(out_dir, fingerprint, name, what):
        storage.write_text(storage.path(out_dir) / name, json.dumps(fingerprint, indent=1))


def clear(out_dir: str | os.PathLike) -> None:
    """Removes the files an evaluation wrote (only those: OUT may be a directory holding other things)."""
    out_dir = storage.path(out_dir)
    for path in _results(out_dir) + [out_dir / name for name in (NAME, *REPORT_FILES)]:
        path.unlink(missing_ok=True)
        if path.parent != out_dir and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()  # a local folder (an object store has no empty folders)


def _results(out_dir: storage.Path) -> list[storage.Path]:
    if not out_dir.is_dir():
        return []
    return sorted(p for name in RESULT_FILES for p in out_dir.glob(f"*/{name}"))
