"""`vlguard-jax data check`: validate a dataset (records, images, token lengths) before renting an accelerator."""

from __future__ import annotations

import os

import numpy as np

from vlguard_jax import storage
from vlguard_jax.data.chat import ChatTokenizer, SampleError
from vlguard_jax.data.images import ImageError, ImageSource
from vlguard_jax.data.sources import Skip, category_counts, read_records


def check_dataset(format: str, json_path: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  tokenizer=None, template: str = "vicuna_v1", max_length: int = 2048,
                  num_image_tokens: int = 576) -> dict:
    """A report with counts, categories, every skip with its reason and, given a tokenizer, token lengths."""
    records = read_records(format, json_path)
    skips = list(records.skips)
    usable = records.conversations
    if images is not None:
        source = ImageSource(images)
        usable = [c for c in usable if c.image is None or _image_ok(source, c, skips)]
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
        lengths = []
        for conversation in usable:
            try:
                lengths.append(len(chat.encode(conversation, expand_image=False).input_ids)
                               + (num_image_tokens - 1) * (conversation.image is not None))
            except SampleError as e:
                skips.append(Skip(conversation.id, str(e)))
        lengths = np.asarray(lengths or [0])
        report["token_length"] = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
        report["token_length"]["max"] = int(lengths.max())
        report["over_max_length"] = {"max_length": max_length, "count": int((lengths > max_length).sum())}
    report["skipped"] = len(skips)
    report["skips"] = [{"id": s.id, "reason": s.reason} for s in skips]
    return report


def _image_ok(source: ImageSource, conversation, skips: list[Skip]) -> bool:
    try:
        source.load(conversation.image)
        return True
    except ImageError as e:
        skips.append(Skip(conversation.id, str(e)))
        return False


def write_report(report: dict, path: str | os.PathLike) -> None:
    storage.write_json(path, report)
