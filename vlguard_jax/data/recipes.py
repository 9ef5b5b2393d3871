"""A run's training samples from its `DataConfig`: sources, tokenized stores, mixture, image roots.

Each source file is tokenized once into a store under `data.cache_dir` (default WORKDIR/cache; see `data.store`),
which every later start and every host memory-maps. A run's first start removes the samples the config excludes
(`data.exclusion`), draws, and records its mixture in WORKDIR/mixture.json (ids, source fingerprints, what was
excluded); every later start replays those ids after checking the sources, so a resumed data iterator walks the same
samples it was saved on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from vlguard_jax import storage
from vlguard_jax.config import DataConfig
from vlguard_jax.data import exclusion, mixture, synthetic
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.image_check import check_images
from vlguard_jax.data.image_sizes import with_image_tokens
from vlguard_jax.data.images import ImageError, ImageSource
from vlguard_jax.data.sources import DataError, Skip, check_skip_fraction
from vlguard_jax.data.store import Samples, SourceFile, open_stores
from vlguard_jax.data.vision_inputs import VisionInputs

MIXTURES = ("posthoc", "mixed", "safety", "helpful", "harmful_finetune", "preference")
POOLS = {"safety": "safety", "helpful": "helpful", "instruction": "helpful", "task": "task", "poison": "poison",
         "preference": "chosen"}
# (mixture part → the source it is drawn from; a preference file is read as two sources, its chosen and its rejected
# side, whose ids are the same)


@dataclasses.dataclass
class TrainingData:
    mix: mixture.Mixture
    samples: Samples  # the mixture's trainable samples, memory-mapped
    images: list[ImageSource | None]  # per store of `samples`: its data part's image root (None: no images)
    skips: list[Skip]  # records the readers skipped
    sample_skips: list[Skip]  # mixture samples the tokenizer refused (too long, nothing supervised, …)
    rejected: Samples | None = None  # preference pairs: the rejected side of each of `samples` (the chosen side),
    # whose lengths are then each pair's longer side


def local_folder(config: DataConfig, workdir: storage.PathLike) -> Path:
    """This host's folder for a run's memory-mapped data: `data.cache_dir`, else WORKDIR/cache, else (a workdir in a
    bucket) this host's user cache, since a memory map needs a local disk. Stores are named by their content, so
    runs and hosts may share one."""
    if config.cache_dir:
        if not storage.is_local(config.cache_dir):
            raise DataError(f"data.cache_dir must be a local folder, not {config.cache_dir}: the tokenized stores "
                            f"are memory-mapped (leave it unset: a run in a bucket caches on each host's disk)")
        return Path(config.cache_dir)
    if storage.is_local(workdir):
        return Path(workdir) / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlguard-jax"


def synthetic_dataset(config: DataConfig, workdir: storage.PathLike) -> dict[str, Path]:
    """Generates (once) the synthetic dataset and its tokenizer: under WORKDIR/data, or for a workdir in a bucket
    under `local_folder`, named by its options (each host generates the same bytes)."""
    from vlguard_jax.data.vocab import build_tokenizer

    options = synthetic.SyntheticConfig(**config.synthetic_options)
    if storage.is_local(workdir):
        folder = Path(workdir) / "data"
    else:
        digest = hashlib.sha256(json.dumps(config.synthetic_options, sort_keys=True).encode()).hexdigest()[:16]
        folder = local_folder(config, workdir) / f"synthetic-{digest}"
    paths = synthetic.generate(folder, options)
    tokenizer_dir = folder / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        build_tokenizer(synthetic.corpus(options), tokenizer_dir, vocab_size=1024)
    return {**paths, "tokenizer": tokenizer_dir}


def training_data(config: DataConfig, workdir: Path, chat: ChatTokenizer, primary: bool = True,
                  barrier: Callable[[str], None] = lambda name: None,
                  vision: VisionInputs | None = None) -> TrainingData:
    """The run's samples; replays WORKDIR/mixture.json when present. The `primary` process writes it and builds
    missing stores while the others wait at `barrier` (see `store.open_stores`). An any-resolution model's `vision`
    counts each image's own tokens in its sample's length (`data.image_sizes`)."""
    if config.mixture not in MIXTURES:
        raise DataError(f"data.mixture must be one of {', '.join(MIXTURES)}, got {config.mixture!r}")
    formats, paths, image_roots = _sources(config, workdir)
    if formats.get("chosen") == "spavl:chosen":  # SPA-VL's embedded images, extracted once per host
        image_roots = {**image_roots, **_spavl_images(config, workdir, primary, barrier)}
    roots = {name: _image_source(name, root) for name, root in image_roots.items()}  # before any tokenizing
    manifest_path = workdir / "mixture.json"
    recorded = _read_manifest(manifest_path)
    if recorded is not None:  # before any read
        exclusion.check_resume(recorded.get("excluded"), config.exclude)
    checked = mixture.check_sources(recorded.get("sources", {}), paths) if recorded else {}
    listed = None if recorded else exclusion.listed(config, formats)
    contents = {}
    for name, path in paths.items():  # a preference file, read as two sources, is hashed once
        same = next((contents[known] for known in contents if paths[known] == path), None)
        contents[name] = checked.get(name) or same or _fingerprint(path)
    files = {name: SourceFile.of(formats[name], paths[name], config.seed, contents[name]) for name in paths}
    stores = open_stores(files, chat, local_folder(config, workdir), primary, barrier)
    for name, store in stores.items():
        check_skip_fraction(paths[name], store.reader_skips, len(store), config.max_skip_fraction)
    pools = {part: stores[name].ids if name in stores else [] for part, name in POOLS.items()}
    if "rejected" in stores and stores["rejected"].ids != stores["chosen"].ids:
        raise DataError(f"{paths['chosen']}: its chosen and rejected sides were read with different ids (a reader "
                        f"bug); report it with the file")
    if recorded is not None:
        try:
            mix = mixture.replay(recorded, pools)
        except DataError as e:
            raise DataError(f"{manifest_path}: {e}; restore the data or start a new --workdir") from e
    else:
        excluded = exclusion.excluded(config, listed, stores)
        left = _without(pools, excluded)
        mix = _draw(config, left["safety"], left["helpful"], left["task"], left["poison"], left["preference"])
        if excluded is not None:
            mix.manifest["excluded"] = excluded
    if not mix.manifest.get("sources"):  # first start (or a manifest from before fingerprints were recorded)
        mix.manifest["sources"] = contents
        if primary:
            mix.write_manifest(manifest_path)
    if config.mixture == "preference":
        return _pairs(config, mix, stores, roots, chat, vision)
    samples, sample_skips = Samples.select([(stores[POOLS[part]], ids) for part, ids in mix.manifest["parts"].items()
                                            if ids])
    parts = [next(name for name, store in stores.items() if store is known) for known in samples.stores]
    images = [roots[name] for name in parts]
    check_images(samples, images, parts, config.max_missing_images)
    if vision is not None and vision.tiled:
        samples, _, too_long = with_image_tokens(samples, images, vision, chat.max_length)
        sample_skips += too_long
    skips = [s for store in stores.values() for s in store.reader_skips]
    return TrainingData(mix, samples, images, skips, sample_skips)


def _pairs(config: DataConfig, mix: mixture.Mixture, stores: dict, roots: dict, chat: ChatTokenizer,
           vision: VisionInputs | None) -> TrainingData:
    """The mixture's pairs as two aligned `Samples`; a pair either side of which the tokenizer refused is skipped
    whole, with that side's reason (as is one too long with its image's tokens, or whose image's size cannot be
    read)."""
    chosen, rejected = stores["chosen"], stores["rejected"]
    refused = {}
    for side, store in (("rejected", rejected), ("chosen", chosen)):
        refused.update({store.ids[row]: f"{side} answer: {reason}" for row, reason in store.skipped.items()})
    ids = mix.manifest["parts"]["preference"]
    kept = [i for i in ids if i not in refused]
    if not kept:
        raise DataError(f"none of the {len(ids)} preference pairs of {config.preference} can be trained on (first: "
                        f"{next(iter(refused.values()), 'none drawn')})")
    (samples, _), (rejected_samples, _) = Samples.select([(chosen, kept)]), Samples.select([(rejected, kept)])
    samples.lengths = np.maximum(samples.lengths, rejected_samples.lengths)
    images = [roots["chosen"]]
    check_images(samples, images, ["preference"], config.max_missing_images)
    skips = list(chosen.reader_skips)  # the rejected side's reader skipped the same records
    sample_skips = [Skip(i, refused[i]) for i in ids if i in refused]
    if vision is not None and vision.tiled:
        samples, rejected_samples, too_long = with_image_tokens(samples, images, vision, chat.max_length,
                                                                rejected_samples)
        sample_skips += too_long
    return TrainingData(mix, samples, images, skips, sample_skips, rejected_samples)


def _spavl_images(config: DataConfig, workdir: Path, primary: bool, barrier) -> dict[str, str]:
    """The image root of SPA-VL's embedded images: a zip each host extracts once into its `local_folder` (the
    primary first, so a shared cache is written once); none when its records name image files instead."""
    from vlguard_jax.data.preference import ensure_spavl_images

    folder = local_folder(config, workdir)
    zipped = ensure_spavl_images(config.preference, folder) if primary else None
    barrier("vlguard-jax: SPA-VL images extracted by the primary process")
    zipped = zipped or ensure_spavl_images(config.preference, folder)
    return {} if zipped is None else {"chosen": str(zipped), "rejected": str(zipped)}


def _sources(config: DataConfig, workdir: Path) -> tuple[dict, dict, dict]:
    """Reader format, file and image root of each source the mixture uses, by name ("safety", "helpful"; a
    preference file's "chosen" and "rejected" sides)."""
    if config.synthetic:
        paths = synthetic_dataset(config, workdir)
        config = dataclasses.replace(config, safety=str(paths["train"]), helpful=str(paths["instruct"]),
                                     helpful_format="llava",  # image roots given in the config replace theirs
                                     safety_images=config.safety_images or str(paths["images"]),
                                     helpful_images=config.helpful_images or str(paths["images"]),
                                     preference=config.preference or str(paths["pairs"]),
                                     preference_images=config.preference_images or str(paths["images"]))
    if config.mixture == "preference":
        from vlguard_jax.data.preference import side_formats

        if config.preference is None:
            raise DataError("data.mixture=preference needs data.preference: the pairs file")
        chosen, rejected = side_formats(config.preference_format)
        return ({"chosen": chosen, "rejected": rejected}, {"chosen": config.preference, "rejected": config.preference},
                {"chosen": config.preference_images, "rejected": config.preference_images})
    if config.mixture == "harmful_finetune":
        names = ["task", "poison"] + ["safety"] * bool(config.safety_count)
    else:
        names = [name for name, excluded in (("safety", "helpful"), ("helpful", "safety")) if config.mixture != excluded]
    for name in names:
        if getattr(config, name) is None:
            raise DataError(f"data.mixture={config.mixture} needs the {name} data path in the config")
    formats = {"safety": config.safety_format, "helpful": config.helpful_format, "task": config.task_format,
               "poison": "pairs"}
    return ({name: formats[name] for name in names}, {name: getattr(config, name) for name in names},
            {name: getattr(config, f"{name}_images", None) for name in names})


def _without(pools: dict[str, list[str]], excluded: dict | None) -> dict[str, list[str]]:
    """Each mixture part's pool less the ids `exclusion.excluded` removed from its source."""
    if excluded is None:
        return pools
    removed = {name: set(ids) for name, ids in excluded["removed"].items()}
    return {part: [i for i in ids if i not in removed.get(POOLS[part], ())] for part, ids in pools.items()}


def _image_source(part: str, root: str | None) -> ImageSource | None:
    try:
        return None if root is None else ImageSource(root)
    except ImageError as e:
        raise DataError(f"data.{part}_images: {e}") from None


def _fingerprint(path: str) -> dict:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    return mixture.fingerprint(path)


def _draw(config: DataConfig, safety: list[str], helpful: list[str], task: list[str], poison: list[str],
          preference: list[str]) -> mixture.Mixture:
    kwargs = dict(seed=config.seed, safety_count=config.safety_count, safety_fraction=config.safety_fraction)
    if config.mixture == "preference":
        return mixture.preference(preference, config.num_preference, seed=config.seed)
    if config.mixture == "harmful_finetune":
        return mixture.harmful_finetune(task, poison, safety, config.num_task, config.poison_ratio,
                                        config.safety_count or 0, seed=config.seed)
    if config.mixture == "posthoc":
        return mixture.posthoc(safety, helpful, config.num_helpful, **kwargs)
    if config.mixture == "mixed":
        return mixture.mixed(safety, helpful, **kwargs)
    if config.mixture == "safety":
        return mixture.posthoc(safety, [], 0, **kwargs)
    return mixture.posthoc([], helpful, len(helpful), seed=config.seed)


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
