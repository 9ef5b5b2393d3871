"""A run's training conversations from its `DataConfig`: sources, mixture, image roots, tokenizer location."""

from __future__ import annotations

import dataclasses
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


def training_data(config: DataConfig, workdir: Path) -> TrainingData:
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
    safety = _read("vlguard", safety_path, config) if config.mixture != "helpful" else None
    helpful = _read(helpful_format, helpful_path, config) if config.mixture != "safety" else None
    for records in filter(None, (safety, helpful)):
        records.check_skip_fraction(config.max_skip_fraction)
    kwargs = dict(seed=config.seed, safety_count=config.safety_count, safety_fraction=config.safety_fraction)
    if config.mixture == "posthoc":
        mix = mixture.posthoc(safety.conversations, helpful.conversations, config.num_helpful, **kwargs)
    elif config.mixture == "mixed":
        mix = mixture.mixed(safety.conversations, helpful.conversations, **kwargs)
    elif config.mixture == "safety":
        mix = mixture.posthoc(safety.conversations, [], 0, **kwargs)
    else:
        mix = mixture.posthoc([], helpful.conversations, len(helpful.conversations), seed=config.seed)
    images = {}
    if safety is not None and safety_images is not None:
        images["vlguard"] = ImageSource(safety_images)
    if helpful is not None and helpful_images is not None:
        images[helpful_format] = ImageSource(helpful_images)
    skips = [s for r in (safety, helpful) if r is not None for s in r.skips]
    return TrainingData(mix, images, skips, tokenizer_dir)


def _read(format: str, path, config: DataConfig) -> Records:
    if path is None:
        raise DataError(f"data.mixture={config.mixture} needs the {'safety' if format == 'vlguard' else 'helpful'} "
                        f"data path in the config")
    if format == "vlguard":
        return read_vlguard(path, seed=config.seed)
    return read_records(format, path)
