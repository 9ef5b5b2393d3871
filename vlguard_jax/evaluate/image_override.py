"""One image shown with every prompt of a suite (an adversarial image, say), so that a benchmark's score with and
without it comes from the same prompts and the same judges.

The image replaces each prompt's own and is added to text-only prompts; its folder becomes the image root:
`evaluate(model, tokenizer, override_images(suite, path.name), out, override_source(path), config)`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Sequence

from vlguard_jax import storage
from vlguard_jax.config import ConfigError
from vlguard_jax.data.images import ImageError, ImageSource
from vlguard_jax.evaluate.benchmarks import Benchmark


def override_images(suite: Sequence[Benchmark], relpath: str) -> list[Benchmark]:
    """Copies of `suite`'s benchmarks whose every prompt shows the image at `relpath` (the originals untouched)."""
    return [dataclasses.replace(b, prompts=[dataclasses.replace(p, image=relpath) for p in b.prompts],
                                skips=list(b.skips)) for b in suite]


def override_source(path: str | os.PathLike) -> ImageSource:
    """The image root of the override image at `path` (its folder; for an image in a bucket, a local copy's: each
    host makes its own, so hosts need no shared disk), once the image is found to decode: a missing or unreadable
    file is refused before a model loads."""
    path = storage.path(path)
    if not path.is_file():
        raise ConfigError(f"image override {path}: file not found (give an image file, e.g. a PNG)")
    if storage.is_local(path):
        root = Path(path).parent
    else:
        root = Path(tempfile.mkdtemp(prefix="image_override_"))
        (root / path.name).write_bytes(path.read_bytes())
    source = ImageSource(root)
    try:
        source.load(path.name)
    except ImageError as e:
        raise ConfigError(f"image override {path}: unreadable ({e})") from None
    return source
