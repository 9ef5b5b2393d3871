"""Image sizes for any-resolution models: a sample's length counts its image's own tokens, which follow its size.

LLaVA-NeXT and OneVision expand an image to as many tokens as its tiles make (`VisionInputs.tokens`), so a sample's
length, its bucket and whether it fits `max_length` depend on the image's (height, width). Sizes come from image
headers (`ImageSource.size`: no pixel decoded) and are kept beside the store, STORE/image-sizes-<root key>.npy:
int32 `[rows, 2]`, each row's image's (height, width), `UNREAD` where not read. The key is the root's identity (its
resolved path, size and modification time), so another root, or a root replaced in place, reads its own. Only the
rows asked for are read (a mixture draws 5,000 samples of 665k: their images, not all), each distinct path once,
and only sizes are kept: an image that failed is tried again at the next start, so a repaired file is seen. The
file is replaced atomically and merged with what another process wrote meanwhile, so hosts that build it at once
lose no sizes and never read half a file.

`with_image_tokens` turns the sizes into lengths: a sample whose image cannot be read, or that is longer than
`max_length` with its image's tokens, becomes a `Skip` with its reason, counted with the run's other skips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Sequence

import numpy as np

from vlguard_jax.data.images import ImageError, ImageSource
from vlguard_jax.data.pipeline import check_roots
from vlguard_jax.data.sources import Skip
from vlguard_jax.data.store import Samples, Store
from vlguard_jax.data.vision_inputs import VisionInputs

log = logging.getLogger(__name__)
NO_IMAGE = 0  # the (0, 0) size of a row without an image
UNREAD = -1  # a cached row whose size was not read (yet)
SHOWN = 5  # unreadable images a warning names


def cache_path(store: Store, root: ImageSource) -> Path:
    stat = root.root.stat()
    identity = json.dumps([str(root.root), stat.st_size, stat.st_mtime_ns])
    return store.path / f"image-sizes-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npy"


def image_sizes(store: Store, root: ImageSource, rows: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """int32 `[len(rows), 2]`: the (height, width) of each of the store's `rows`' image under `root`, `NO_IMAGE`
    for a row without one; and {position in `rows`: reason} for the images whose size could not be read (their
    sizes `UNREAD`). Sizes read before come from the cache; the others are read and added to it."""
    path = cache_path(store, root)
    cached = _read(path, len(store))
    paths = store.table.column("image").take(rows).to_pylist()
    unread = {image for row, image in zip(rows, paths) if image is not None and cached[row, 0] == UNREAD}
    read, errors = {}, {}
    for image in sorted(unread):
        try:
            read[image] = root.size(image)
        except ImageError as e:
            errors[image] = str(e)
    for row, image in zip(rows, paths):
        if image in read:
            cached[row] = read[image]
    if read:
        _write(path, cached)
    sizes = np.where(np.array([image is None for image in paths])[:, None], NO_IMAGE, cached[rows])
    return sizes.astype(np.int32), {k: errors[image] for k, image in enumerate(paths) if image in errors}


def with_image_tokens(samples: Samples, roots: Sequence[ImageSource | None], vision: VisionInputs, max_length: int,
                      rejected: Samples | None = None) -> tuple[Samples, Samples | None, list[Skip]]:
    """`samples` (and the `rejected` side of each pair, which shares its image) with each image's own token count
    in their lengths (`Samples.image_tokens`), less those whose image cannot be read or that are then longer than
    `max_length` (`samples.lengths` is a pair's longer side); each of those becomes a Skip naming why."""
    check_roots(samples, roots)
    sizes = np.full((len(samples), 2), NO_IMAGE, np.int32)
    unreadable: dict[int, str] = {}
    for k, root in enumerate(roots):
        if root is None:  # its samples have no image (`check_roots`)
            continue
        at = np.flatnonzero(samples.store_index == k)
        sizes[at], errors = image_sizes(samples.stores[k], root, samples.rows[at])
        unreadable.update({int(at[position]): reason for position, reason in errors.items()})
    readable = np.ones(len(samples), bool)
    readable[list(unreadable)] = False
    tokens = _tokens(np.where(readable[:, None], sizes, NO_IMAGE), vision)
    counted = samples.count_images(tokens)
    lengths = counted.lengths
    skips = [Skip(_id(samples, i), unreadable[i]) if i in unreadable else
             Skip(_id(samples, i), f"{lengths[i]} tokens with its image's {tokens[i]} ({_image(samples, i)}, "
                                   f"{sizes[i, 1]}x{sizes[i, 0]}); more than max_length {max_length}")
             for i in np.flatnonzero(~readable | (lengths > max_length)).tolist()]
    if unreadable:
        log.warning("%d of %d samples skipped: their image's size could not be read (first: %s)", len(unreadable),
                    len(samples), "; ".join(list(unreadable.values())[:SHOWN]))
    kept = np.flatnonzero(readable & (lengths <= max_length))
    return (counted.subset(kept), None if rejected is None else rejected.count_images(tokens).subset(kept), skips)


def _tokens(sizes: np.ndarray, vision: VisionInputs) -> np.ndarray:
    """int32 `[n]`: the image tokens of each (height, width), 0 for `NO_IMAGE`; counted once per distinct size."""
    distinct, inverse = np.unique(sizes, axis=0, return_inverse=True)
    counts = np.array([0 if h == NO_IMAGE else vision.tokens((int(h), int(w))) for h, w in distinct], np.int32)
    return counts[inverse.reshape(-1)]


def _id(samples: Samples, i: int) -> str:
    return samples.stores[samples.store_index[i]].ids[samples.rows[i]]


def _image(samples: Samples, i: int) -> str:
    return samples.stores[samples.store_index[i]].table.column("image")[int(samples.rows[i])].as_py()


def _read(path: Path, rows: int) -> np.ndarray:
    """The cached sizes; all `UNREAD` when there are none (or the file is not a cache of this store: rebuilt)."""
    try:
        cached = np.load(path)
    except (OSError, ValueError, EOFError):
        return np.full((rows, 2), UNREAD, np.int32)
    return cached if cached.shape == (rows, 2) and cached.dtype == np.int32 else np.full((rows, 2), UNREAD, np.int32)


def _write(path: Path, sizes: np.ndarray) -> None:
    """Replaces the cache atomically, keeping the sizes another process wrote since it was read."""
    merged = np.where(sizes == UNREAD, _read(path, len(sizes)), sizes)
    temporary = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        np.save(f, merged)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
