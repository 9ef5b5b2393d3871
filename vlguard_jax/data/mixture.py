"""Training mixes of VLGuard's safety data with helpfulness data, deterministic by seed and replayable by ids.

- post-hoc: the safety data + `num_helpful` samples drawn from the helpfulness pool (VLGuard: 5,000 from
  `llava_v1_5_mix665k` or Alpaca);
- mixed: the safety data appended to the whole original instruction set;
- the safety data itself can be sub-sampled by count or fraction for data-scaling studies;
- preference: DPO's pairs (all, or a seeded count);
- harmful fine-tuning: a user's task data of which a fraction p are harmful pairs, with or without safety data. Sub-samples of one
  seed are nested (the first k of one permutation), so a sweep over sizes compares like with like.
Mixes are drawn over sample ids (a pool is a source file's ids, in file order), so 665k samples cost a list of
strings, not a list of parsed conversations. Every mix carries a manifest with the chosen ids, written next to a run
so it can be reproduced exactly, and fingerprints of the source files they were drawn from, so a resumed run can
refuse data that changed under it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vlguard_jax import storage
from vlguard_jax.data.sources import DataError


@dataclasses.dataclass
class Mixture:
    manifest: dict  # {"kind", "seed", "parts": {name: [ids]}}; a run's adds "sources" and "excluded" (`recipes`)

    @property
    def ids(self) -> list[str]:
        """All ids, part after part."""
        return [i for part in self.manifest["parts"].values() for i in part]

    def write_manifest(self, path: storage.PathLike) -> None:
        """Atomically: a process reading it meanwhile sees the old file or the whole new one."""
        storage.write_json(path, self.manifest, indent=1)


def fingerprint(path: str | os.PathLike) -> dict:
    """{"path", "size", "sha256"} of a source file, hashed in 1 MiB chunks (sources can be gigabytes); of a folder
    (a dataset's parquet shards), over its files' names and contents in name order."""
    if os.path.isdir(path):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(path)}\0{fingerprint(file)['sha256']}\0".encode())
        return {"path": str(path), "size": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return {"path": str(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def check_sources(recorded: dict[str, dict], paths: dict[str, str | os.PathLike]) -> dict[str, dict]:
    """Refuses a source file that differs from its fingerprint in a manifest (`recorded`, by source name); returns
    the fingerprints it computed, by name, so a caller hashes a gigabyte file once."""
    fix = "restore the file or start a new --workdir"
    current = {}
    for name, old in recorded.items():
        path = paths.get(name) or old["path"]
        if not os.path.exists(path):
            raise DataError(f"{path}: missing, but this run's mixture was drawn from it "
                            f"(sha256 {old['sha256'][:12]}…, {old['size']} bytes); {fix}")
        new = fingerprint(path)
        if new["sha256"] != old["sha256"]:
            raise DataError(f"{path}: changed since this run started (sha256 {old['sha256'][:12]}… → "
                            f"{new['sha256'][:12]}…, {old['size']} → {new['size']} bytes); {fix}")
        current[name] = new
    return current


def sample(ids: Sequence[str], *, count: int | None = None, fraction: float | None = None,
           seed: int = 0) -> list[str]:
    """`count` or `fraction` of the ids, without replacement, in pool order; nested across sizes for one seed."""
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count or fraction")
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        count = round(fraction * len(ids))
    if not 0 <= count <= len(ids):
        raise DataError(f"cannot draw {count} samples from a pool of {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))[:count]
    return [ids[i] for i in sorted(order)]


def posthoc(safety: Sequence[str], helpful: Sequence[str], num_helpful: int = 5000, *,
            seed: int = 0, safety_count: int | None = None, safety_fraction: float | None = None) -> Mixture:
    """VLGuard post-hoc fine-tuning data: (a sub-sample of) the safety data + `num_helpful` helpfulness samples."""
    safety = _safety_subset(safety, safety_count, safety_fraction, seed)
    helpful = sample(helpful, count=min(num_helpful, len(helpful)), seed=seed + 1)
    return _mixture("posthoc", seed, {"safety": safety, "helpful": helpful})


def mixed(safety: Sequence[str], instruction: Sequence[str], *, seed: int = 0,
          safety_count: int | None = None, safety_fraction: float | None = None) -> Mixture:
    """VLGuard mixed fine-tuning data: the whole instruction set with (a sub-sample of) the safety data."""
    safety = _safety_subset(safety, safety_count, safety_fraction, seed)
    return _mixture("mixed", seed, {"instruction": list(instruction), "safety": safety})


def harmful_finetune(task: Sequence[str], poison: Sequence[str], safety: Sequence[str], num_task: int,
                     poison_ratio: float, safety_count: int = 0, *, seed: int = 0) -> Mixture:
    """The harmful-fine-tuning protocol's data: `num_task` samples of which round(p·n) are harmful pairs (the rest
    task samples), plus `safety_count` safety samples (the `vlguard` defence: refusals mixed into the user's data)."""
    if not 0 <= poison_ratio <= 1:
        raise DataError(f"poison_ratio must lie in [0, 1], got {poison_ratio}")
    harmful = round(poison_ratio * num_task)
    parts = {"task": sample(task, count=num_task - harmful, seed=seed),
             "poison": sample(poison, count=harmful, seed=seed + 1)}
    if safety_count:
        parts["safety"] = sample(safety, count=safety_count, seed=seed + 2)
    return _mixture("harmful_finetune", seed, parts)


def preference(pairs: Sequence[str], count: int | None = None, *, seed: int = 0) -> Mixture:
    """Preference pairs: all of them, or `count` drawn (nested across counts for one seed)."""
    chosen = list(pairs) if count is None else sample(pairs, count=count, seed=seed)
    return _mixture("preference", seed, {"preference": chosen})


def replay(manifest: dict, pools: dict[str, Sequence[str]]) -> Mixture:
    """Rebuilds a mixture from its manifest, checking each part's ids against the pool it was drawn from; the
    manifest's other records (sources, exclusions) are kept as written."""
    for name, ids in manifest["parts"].items():
        if name not in pools:
            raise DataError(f"the manifest has a part '{name}' but no pool of that name was given")
        pool = set(pools[name])
        missing = [i for i in ids if i not in pool]
        if missing:
            raise DataError(f"{len(missing)} ids of part '{name}' are not in its pool (first: {missing[:5]}); "
                            f"the source data changed since the manifest was written")
    return Mixture({**manifest, **_mixture(manifest["kind"], manifest["seed"], manifest["parts"]).manifest})


def _safety_subset(safety, count, fraction, seed) -> list[str]:
    if count is None and fraction is None:
        return list(safety)
    return sample(safety, count=count, fraction=fraction, seed=seed)


def _mixture(kind: str, seed: int, parts: dict[str, list[str]]) -> Mixture:
    ids = [i for part in parts.values() for i in part]
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            dup += [i] if i in seen else []
            seen.add(i)
        raise DataError(f"the mixture holds repeated ids ({dup[:5]}); give each source distinct ids")
    return Mixture({"kind": kind, "seed": seed, "parts": {name: list(part) for name, part in parts.items()}})
