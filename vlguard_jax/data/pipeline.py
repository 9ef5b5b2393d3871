"""The Grain input pipeline: tokenized samples → fixed-shape, per-host batches, deterministic and resumable.

1. Samples come tokenized from memory-mapped stores (`data.store`: each source file tokenized once, shared by
   starts and hosts), read by index; samples that cannot be trained on (too long, nothing supervised, bad text)
   were skipped with their reasons before any step runs.
2. Indices are shuffled per epoch by seed (Grain), cut into *global* batches, and each host takes its slice:
   hosts see disjoint shards whose union is the epoch. The padded length is the smallest bucket that fits the
   longest sample of the global batch, so every host pads alike and the step compiles once per bucket.
3. Worker processes load and preprocess images, each from its data part's root, into the model's fixed-shape image
   arrays (`VisionInputs`: `pixel_values`, and an any-resolution model's `image_index` / `image_weight`, padded to
   its most crops and tokens), so a batch's shapes follow its length bucket alone. An any-resolution sample's
   `<image>` expands to its image's own token count (`Samples.image_tokens`). An image that fails to load at
   this point does not stop the epoch: its row keeps its shape, carries no loss, and is marked in the batch's
   `image_failed` with the reason in `image_error`; the training loop counts them against
   data.max_image_failures.
4. Preference pairs (`rejected` given): each row holds a pair, `[rows, 2, len]` tokens, one image (and, when the
   reference was precomputed, its `reference_logps`).
The iterator's `get_state()`/`set_state()` resume a run at the exact batch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import grain
import numpy as np
from absl import flags

from vlguard_jax.buckets import bucket
from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.image_check import images_of
from vlguard_jax.data.images import ImageConfig, ImageError, ImageSource
from vlguard_jax.data.sources import DataError
from vlguard_jax.data.store import Samples
from vlguard_jax.data.vision_inputs import VisionInputs

log = logging.getLogger(__name__)
ImageRoots = ImageSource | Sequence[ImageSource | None] | None  # one root, or one per store of the samples


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    global_batch_size: int
    buckets: tuple[int, ...] = (256, 512, 1024, 2048)  # padded lengths; samples longer than the last are skipped
    num_epochs: int = 1
    seed: int = 0
    # Image-loading processes; 0 loads in the main process. On 2 CPU cores, 0 measured 521 samples/s at 336 px
    # (bench, 4 batches read ahead) and 2 measured 59 (moving ~10 MB batches between processes costs more than decoding): raise it on hosts
    # with many cores and large JPEGs.
    workers: int = 0
    # Batches built ahead, by as many threads. Bounds host memory: Grain's default (500 batches, 16 threads) grew a
    # host's memory without end behind a slow step (a 336-px batch of 128 is 175 MB) and, on 2 cores, took 18 s to
    # the first batch that alone takes 1.6 s; 4 matched its steady throughput.
    read_ahead: int = 4
    vision: VisionInputs | None = None  # the model's image inputs (a run's); None: `image` below
    image: ImageConfig = ImageConfig()  # without `vision`: `[3, size, size]` pixels of `chat.num_image_tokens` tokens


class HostBatch:
    """Global batch indices → this host's padded numpy batch (runs in Grain worker processes).

    With `rejected` (preference pairs, aligned with `samples`), token arrays are `[rows, 2, len]`: side 0 the
    chosen sample, side 1 the rejected one; the pair's one image is the chosen sample's. With `reference_logps`
    (`[pairs, 2]`, a precomputed reference) each row carries its pair's."""

    def __init__(self, samples: Samples, chat: ChatTokenizer, images: ImageRoots,
                 config: PipelineConfig, process_index: int, process_count: int, rejected: Samples | None = None,
                 reference_logps: np.ndarray | None = None):
        self.samples, self.images, self.config, self.rejected = samples, images, config, rejected
        self.reference_logps = reference_logps
        self.has_images = chat.num_image_tokens != 0  # a text-only model's batches carry no pixels
        self.pad_id = chat.tokenizer.pad_token_id or 0
        self.expand = chat.expand
        self.host_slice = slice(process_index * config.global_batch_size // process_count,
                                (process_index + 1) * config.global_batch_size // process_count)

    def __call__(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        length = bucket(int(self.samples.lengths[global_indices].max()), self.config.buckets, "a sample")
        indices = np.asarray(global_indices)[self.host_slice]
        sides = (len(indices),) if self.rejected is None else (len(indices), 2)
        batch = {
            "input_ids": np.full((*sides, length), self.pad_id, np.int32),
            "labels": np.full((*sides, length), IGNORE, np.int32),
            "attention_mask": np.zeros((*sides, length), bool),
            "sample_index": indices.astype(np.int32),
            "image_failed": np.zeros(len(indices), bool),
        }
        if self.reference_logps is not None:
            batch["reference_logps"] = self.reference_logps[indices]
        errors = [""] * len(indices)
        if self.has_images:
            batch.update(self._empty_images(len(indices)))
        for row, i in enumerate(indices):  # row b's image sits in row b of the image arrays (the model's `row_images`)
            sample = self.samples[i]
            tokens = None if self.samples.image_tokens is None else int(self.samples.image_tokens[i])
            if self.rejected is None:
                self._write(batch, row, sample, tokens)
            else:
                self._write(batch, (row, 0), sample, tokens)
                self._write(batch, (row, 1), self.rejected[i], tokens)
            if sample["image"] is None:
                continue
            try:
                source = (self.images if isinstance(self.images, ImageSource)
                          else self.images[self.samples.store_index[i]])
                self._put_image(batch, row, source, sample["image"], tokens)
            except ImageError as e:
                log.warning("sample %s: %s (its row carries no loss)", sample["id"], e)
                batch["labels"][row] = IGNORE
                batch["image_failed"][row] = True
                errors[row] = f"sample {sample['id']}: {e}"
        batch["image_error"] = np.array(errors)
        return batch

    def _write(self, batch: dict, at, sample: dict, image_tokens: int | None) -> None:
        encoded = self.expand(sample["encoded"], image_tokens=image_tokens)
        n = len(encoded.input_ids)
        batch["input_ids"][at][:n] = encoded.input_ids
        batch["labels"][at][:n] = encoded.labels
        batch["attention_mask"][at][:n] = True

    def _empty_images(self, rows: int) -> dict[str, np.ndarray]:
        vision, size = self.config.vision, self.config.image.size
        return vision.batch(rows) if vision else {"pixel_values": np.zeros((rows, 3, size, size), np.float32)}

    def _put_image(self, batch: dict, row: int, source: ImageSource, path: str, tokens: int | None) -> None:
        """Row `row`'s image, preprocessed for the model; an ImageError (naming the image) when it cannot be, or
        when an any-resolution image no longer has the `tokens` its sample's length counted."""
        vision = self.config.vision
        if vision is None or not vision.tiled:
            batch["pixel_values"][row] = source.pixels(path, vision.image if vision else self.config.image)
            return
        image = source.load(path)
        try:
            encoded = vision.encode(image, source.max_pixels)
        except ImageError as e:
            raise source.error(path, str(e)) from None
        if len(encoded.index) != tokens:
            raise source.error(path, f"{image.width}x{image.height} pixels make {len(encoded.index)} image tokens, "
                                     f"but its sample's length counted {tokens}: the image changed since its size "
                                     f"was read (delete the store's image-sizes-*.npy files to read the sizes again)")
        vision.put(batch, row, encoded)


def build_pipeline(samples: Samples, chat: ChatTokenizer, images: ImageRoots,
                   config: PipelineConfig, process_index: int = 0, process_count: int = 1,
                   start: int = 0, rejected: Samples | None = None,
                   reference_logps: np.ndarray | None = None) -> grain.IterDataset:
    """The batch stream of one host from global batch `start` on: `num_epochs` shuffled epochs, the last partial
    global batch dropped. Batch k is a function of k alone (the seed fixes the order; reading a batch draws nothing),
    so a resumed run starts at its step with no iterator state, whatever `workers` it reads with."""
    if config.global_batch_size % process_count:
        raise ValueError(f"global batch {config.global_batch_size} does not divide over {process_count} hosts")
    if chat.max_length > max(config.buckets):
        raise ValueError(f"max_length {chat.max_length} exceeds the largest bucket {max(config.buckets)}")
    tiled = config.vision is not None and config.vision.tiled
    if tiled != (chat.num_image_tokens is None):
        raise ValueError(f"the chat's num_image_tokens={chat.num_image_tokens} does not suit the model's images "
                         f"(an any-resolution model's is None: each image has its own count)")
    if tiled and samples.image_tokens is None:
        raise ValueError("an any-resolution model's samples need each image's token count in their lengths "
                         "(data.image_sizes.with_image_tokens)")
    check_roots(samples, images)
    if len(samples) < config.global_batch_size:
        raise DataError(f"{len(samples)} samples do not fill one global batch of {config.global_batch_size}")
    read = grain.ReadOptions(num_threads=config.read_ahead, prefetch_buffer_size=config.read_ahead)
    dataset = (global_batches(len(samples), config)[start:]
               .map(HostBatch(samples, chat, images, config, process_index, process_count, rejected,
                              reference_logps))
               .to_iter_dataset(read))
    if config.workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags; we are not an absl app
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.workers))
    return dataset


def global_batches(count: int, config: PipelineConfig) -> grain.MapDataset:
    """The sample indices of each global batch of a run over `count` samples: `num_epochs` epochs shuffled by
    `seed`, the last partial batch of the whole run dropped."""
    return (grain.MapDataset.range(count)
            .shuffle(seed=config.seed)
            .repeat(config.num_epochs)
            .batch(config.global_batch_size, drop_remainder=True))


def batch_lengths(lengths: np.ndarray, config: PipelineConfig) -> list[int]:
    """The padded length of each global batch of a run over samples of `lengths` (each at most the largest bucket):
    its distinct values are the train-step shapes the run compiles."""
    return [bucket(int(lengths[indices].max()), config.buckets, "a sample")
            for indices in global_batches(len(lengths), config)]


def check_roots(samples: Samples, images: ImageRoots) -> None:
    """Refuses samples with images whose store has no image root."""
    if isinstance(images, ImageSource):
        return
    roots = images or [None] * len(samples.stores)
    if len(roots) != len(samples.stores):
        raise ValueError(f"{len(roots)} image roots for the {len(samples.stores)} stores of the samples")
    unrooted = [samples.stores[k].meta["built_from"] for k, root in enumerate(roots)
                if root is None and len(images_of(samples, k))]
    if unrooted:
        raise DataError(f"samples of {', '.join(unrooted)} have images but no image root was given for them (a "
                        f"directory or zip)")


def steps_per_epoch(samples: Samples, config: PipelineConfig) -> int:
    return len(samples) // config.global_batch_size
