"""`vlguard-jax data check`: validate a dataset (records, images, token lengths) before renting an accelerator."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vlguard_jax import storage
from vlguard_jax.buckets import bucket
from vlguard_jax.config import DataConfig, TrainConfig
from vlguard_jax.data.chat import ChatTokenizer, SampleError
from vlguard_jax.data.images import ImageError, ImageSource
from vlguard_jax.data.pipeline import PipelineConfig, batch_lengths
from vlguard_jax.data.sources import Skip, category_counts, read_records
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models.config import LlavaConfig


def check_dataset(format: str, json_path: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  tokenizer=None, template: str = "vicuna_v1", max_length: int = 2048,
                  num_image_tokens: int = 576, model: LlavaConfig | None = None,
                  buckets: Sequence[int] = DataConfig.buckets, global_batch_size: int = TrainConfig.global_batch_size,
                  epochs: int = TrainConfig.epochs, seed: int = DataConfig.seed) -> dict:
    """A report with counts, categories, every skip with its reason and, given a tokenizer, token lengths and the
    train-step shapes a run compiles (`train_step_shapes`, for `buckets`, `global_batch_size`, `epochs`, `seed`).
    A `model` gives the image tokens (replacing `num_image_tokens`): an any-resolution model's follow each image's
    size, read from `images`."""
    vision = VisionInputs.of(model) if model is not None and model.vision is not None else None
    if vision is not None and vision.tiled and images is None:
        raise ValueError(f"a {model.model_type} model's image tokens follow each image's size: give the images")
    if model is not None:
        num_image_tokens = None if model.anyres else model.num_image_tokens
    records = read_records(format, json_path)
    skips = list(records.skips)
    usable, sizes = records.conversations, {}
    if images is not None:
        source = ImageSource(images)
        usable = [c for c in usable if c.image is None or _image_ok(source, c, skips, sizes)]
    report = {
        "source": str(json_path),
        "format": format,
        "conversations": len(usable),
        "supervised_answers": sum(c.num_answers for c in usable),
        "with_image": sum(c.image is not None for c in usable),
        "categories": category_counts(usable),
        "duplicate_ids": records.duplicate_ids,
    }
    if tokenizer is not None:
        chat = ChatTokenizer(tokenizer, template, num_image_tokens, max_length=2**31 - 1)  # measure, do not cut
        tiled = vision is not None and vision.tiled
        lengths = []
        for conversation in usable:
            try:
                stored = len(chat.encode(conversation, expand_image=False).input_ids)
                if conversation.image is not None:
                    stored += (vision.tokens(sizes[conversation.id]) if tiled else num_image_tokens) - 1
                lengths.append(stored)
            except SampleError as e:
                skips.append(Skip(conversation.id, str(e)))
        lengths = np.asarray(lengths or [0])
        report["token_length"] = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
        report["token_length"]["max"] = int(lengths.max())
        report["over_max_length"] = {"max_length": max_length, "count": int((lengths > max_length).sum())}
        trained = lengths[(lengths > 0) & (lengths <= min(max_length, max(buckets)))]
        report["train_step_shapes"] = train_step_shapes(trained, PipelineConfig(
            global_batch_size, tuple(buckets), epochs, seed))
    report["skipped"] = len(skips)
    report["skips"] = [{"id": s.id, "reason": s.reason} for s in skips]
    return report


def train_step_shapes(lengths: np.ndarray, config: PipelineConfig) -> dict:
    """How many train steps of distinct shapes (one per padded length) a run compiles: `count`, exact for a run
    on exactly these samples in this order (`config`'s epochs, seed and global batch: the pipeline pads each global
    batch to the bucket of its longest sample); `upper_bound`, the samples' distinct buckets, which bound any run
    drawn from them (a mixture of some of them, another seed)."""
    padded = batch_lengths(lengths, config) if len(lengths) >= config.global_batch_size else []
    distinct = {bucket(n, config.buckets, "a sample") for n in lengths.tolist()}
    return {"count": len(set(padded)), "lengths": sorted(set(padded)), "upper_bound": len(distinct),
            "buckets": list(config.buckets), "samples": len(lengths), "global_batches": len(padded),
            "global_batch_size": config.global_batch_size, "epochs": config.num_epochs, "seed": config.seed}


def _image_ok(source: ImageSource, conversation, skips: list[Skip], sizes: dict[str, tuple[int, int]]) -> bool:
    """Whether the conversation's image loads (else a Skip with the reason); its (height, width) into `sizes`."""
    try:
        image = source.load(conversation.image)
    except ImageError as e:
        skips.append(Skip(conversation.id, str(e)))
        return False
    sizes[conversation.id] = (image.height, image.width)
    return True


def write_report(report: dict, path: str | os.PathLike) -> None:
    storage.write_json(path, report)
