"""A run's training conversations from its `DataConfig`: sources, mixture, image roots, tokenizer location.

A run's first start records its mixture in WORKDIR/mixture.json (ids + source fingerprints); every later start
replays those ids after checking the sources, so a resumed data iterator walks the same samples it was saved on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vlguard_jax.config import DataConfig
from vlguard_jax.data import mixture, synthetic
from vlguard_jax.data.images import ImageSource
from vlguard_jax.data.sources import DataError, Records, read_records, read_vlguard

MIXTURES = ("posthoc", "mixed", "safety", "helpful")


@dataclasses.dataclass
class TrainingData:
    mix: mixture.Mixture
    images: dict[str, ImageSource]  # by conversation source ("vlguard", "llava")
    skips: list  # reader skips, (id, reason)
    tokenizer_dir: Path | None  # the synthetic data's own tokenizer, when generated


def synthetic_dataset(config: DataConfig, workdir: Path) -> dict[str, Path]:
    """Generates (once) the synthetic dataset and its tokenizer under WORKDIR/data."""
    from vlguard_jax.data.vocab import build_tokenizer

    options = synthetic.SyntheticConfig(**config.synthetic_options)
    paths = synthetic.generate(workdir / "data", options)
    tokenizer_dir = workdir / "data" / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        build_tokenizer(synthetic.corpus(options), tokenizer_dir, vocab_size=1024)
    return {**paths, "tokenizer": tokenizer_dir}


def training_data(config: DataConfig, workdir: Path, record: bool = False) -> TrainingData:
    """The run's data; replays WORKDIR/mixture.json when present. `record`: write it (one process: the primary)."""
    if config.mixture not in MIXTURES:
        raise DataError(f"data.mixture must be one of {', '.join(MIXTURES)}, got {config.mixture!r}")
    tokenizer_dir = None
    safety_path, safety_images = config.safety, config.safety_images
    helpful_path, helpful_images, helpful_format = config.helpful, config.helpful_images, config.helpful_format
    if config.synthetic:
        paths = synthetic_dataset(config, workdir)
        tokenizer_dir = paths["tokenizer"]
        safety_path, safety_images = paths["train"], paths["images"]
        helpful_path, helpful_images, helpful_format = paths["instruct"], paths["images"], "llava"
    sources = {"safety": safety_path if config.mixture != "helpful" else None,
               "helpful": helpful_path if config.mixture != "safety" else None}
    manifest_path = workdir / "mixture.json"
    recorded = _read_manifest(manifest_path)
    if recorded is not None:
        mixture.check_sources(recorded.get("sources", {}), sources)  # before parsing: a refusal costs no read
    safety = _read("vlguard", safety_path, config) if config.mixture != "helpful" else None
    helpful = _read(helpful_format, helpful_path, config) if config.mixture != "safety" else None
    for records in filter(None, (safety, helpful)):
        records.check_skip_fraction(config.max_skip_fraction)
    if recorded is not None:
        pools = {name: records.conversations if records else [] for name, records in
                 (("safety", safety), ("helpful", helpful), ("instruction", helpful))}
        try:
            mix = mixture.replay(recorded, pools)
        except DataError as e:
            raise DataError(f"{manifest_path}: {e}; restore the data or start a new --workdir") from e
        mix.manifest["sources"] = recorded.get("sources", {})
    else:
        mix = _draw(config, safety, helpful)
    if not mix.manifest.get("sources"):  # first start (or a manifest from before fingerprints were recorded)
        mix.manifest["sources"] = {name: mixture.fingerprint(path) for name, path in sources.items() if path}
        if record:
            mix.write_manifest(manifest_path)
    images = {}
    if safety is not None and safety_images is not None:
        images["vlguard"] = ImageSource(safety_images)
    if helpful is not None and helpful_images is not None:
        images[helpful_format] = ImageSource(helpful_images)
    skips = [s for r in (safety, helpful) if r is not None for s in r.skips]
    return TrainingData(mix, images, skips, tokenizer_dir)


def _draw(config: DataConfig, safety: Records | None, helpful: Records | None) -> mixture.Mixture:
    kwargs = dict(seed=config.seed, safety_count=config.safety_count, safety_fraction=config.safety_fraction)
    if config.mixture == "posthoc":
        return mixture.posthoc(safety.conversations, helpful.conversations, config.num_helpful, **kwargs)
    if config.mixture == "mixed":
        return mixture.mixed(safety.conversations, helpful.conversations, **kwargs)
    if config.mixture == "safety":
        return mixture.posthoc(safety.conversations, [], 0, **kwargs)
    return mixture.posthoc([], helpful.conversations, len(helpful.conversations), seed=config.seed)


def _read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("parts"), dict):
            raise ValueError("no 'parts'")
    except (ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a mixture manifest ({e}); restore it or start a new --workdir") from e
    return manifest


def _read(format: str, path, config: DataConfig) -> Records:
    if path is None:
        raise DataError(f"data.mixture={config.mixture} needs the {'safety' if format == 'vlguard' else 'helpful'} "
                        f"data path in the config")
    if format == "vlguard":
        return read_vlguard(path, seed=config.seed)
    return read_records(format, path)
