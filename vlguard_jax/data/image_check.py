"""Before a run's first step: every image its samples name is in its data part's image root.

A root that exists but is the wrong one (the test split's archive, another release's folder layout) would otherwise
show only as rows that fail to load one at a time, each carrying no loss: a run that trains on nothing and says it
finished. The check reads a zip's index or one listing per folder (`ImageSource.missing`), never an image.
"""

from __future__ import annotations

import logging
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from vlguard_jax.data.images import ImageSource
from vlguard_jax.data.sources import DataError
from vlguard_jax.data.store import Samples

log = logging.getLogger(__name__)
SHOWN = 5  # missing paths a message names


def images_of(samples: Samples, k: int) -> pa.Array:
    """The distinct image paths of the samples drawn from `samples.stores[k]`."""
    column = samples.stores[k].table.column("image").take(samples.rows[samples.store_index == k])
    return pc.unique(column.filter(pc.is_valid(column)))


def check_images(samples: Samples, roots: Sequence[ImageSource | None], parts: Sequence[str],
                 max_missing: float) -> None:
    """A DataError naming the root, the count and the first missing paths when more than `max_missing` (a
    fraction) of the images of a part's samples are not in its root (`roots[k]`, `parts[k]`: the root and the
    data part of `samples.stores[k]`); a warning when fewer are (their rows then fail to load, each counted against
    data.max_image_failures; an any-resolution model's samples are skipped before, their image's size unread)."""
    for k, (root, part) in enumerate(zip(roots, parts)):
        if root is None:
            continue  # its samples name no image, or `pipeline.build_pipeline` refuses them
        paths = images_of(samples, k).to_pylist()
        missing = root.missing(paths)
        if not missing:
            continue
        setting = f"data.{part}_images"
        found = (f"{setting} {root.root}: {len(missing)} of the {len(paths)} images the {part} samples name are not "
                 f"there (first {min(len(missing), SHOWN)}: {', '.join(map(repr, missing[:SHOWN]))})")
        if len(missing) > max_missing * len(paths):
            raise DataError(f"{found}; more than data.max_missing_images={max_missing:g}. Point {setting} at the "
                            f"folder or zip archive these paths are relative to")
        log.warning("%s; their rows will fail to load and count against data.max_image_failures (any-resolution "
                    "models: their samples are skipped, counted against data.max_skip_fraction)", found)
