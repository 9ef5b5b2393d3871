"""What a model's images become on the host, and the arrays a batch carries them in.

A fixed-resolution model (LLaVA-1.5, MiniGPT-v2) takes one `[3, S, S]` array per image (`data.images`) and gives
every image the same number of image tokens. An any-resolution model (LLaVA-NeXT, OneVision) takes an image's crops
and its packing plan (`models.anyres`), and its image-token count follows the image's size. `VisionInputs` hides the
difference from the pipeline, the evaluation runner and the engine: `tokens(size)` says how many `<image>` tokens an
image expands to, `encode` preprocesses one, `batch`/`put` lay a batch out in fixed shapes (an any-resolution
batch pads every image to the model's most crops and tokens, so one compiled step serves every image), and
`models.tiles.images_of` turns those arrays back into what the model takes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np
from PIL import Image

from vlguard_jax.data.anyres_images import preprocess_anyres
from vlguard_jax.data.images import MAX_PIXELS, ImageConfig, preprocess
from vlguard_jax.models import anyres
from vlguard_jax.models.config import LlavaConfig

# The processors' normalization by tower, where it is not CLIP's (`ImageConfig`'s default): llava-hf's OneVision
# preprocessor_config.json gives SigLIP's 0.5 / 0.5
NORMALIZATION = {"siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
TILED_KEYS = ("image_index", "image_weight")  # a batch's packing plans, beside its `pixel_values`


class TiledImage(NamedTuple):
    """One any-resolution image on the host: its crops `[crops, 3, S, S]` and plan `[tokens, taps]`."""

    pixels: np.ndarray
    index: np.ndarray
    weight: np.ndarray


@dataclasses.dataclass(frozen=True)
class VisionInputs:
    model: LlavaConfig
    image: ImageConfig  # resize mode, size and normalization (any-resolution models: normalization only)

    @classmethod
    def of(cls, model: LlavaConfig, mode: str = "pad") -> VisionInputs:
        """The inputs of `model`'s tower; `mode` (`data.images` modes) applies to fixed-resolution models."""
        mean_std = NORMALIZATION.get(model.vision.tower)
        extra = {} if mean_std is None else dict(mean=mean_std[0], std=mean_std[1])
        return cls(model, ImageConfig(size=model.vision.image_size, mode=mode, **extra))

    @property
    def tiled(self) -> bool:
        return self.model.anyres

    def tokens(self, size: tuple[int, int]) -> int:
        """`<image>` tokens (and features) of an image of `size` (height, width)."""
        return anyres.image_tokens(self.model, size) if self.tiled else self.model.num_image_tokens

    @functools.cached_property
    def max_tokens(self) -> int:
        """Computed once: OneVision's bound enumerates every unpadding window (14 ms), and each batch asks for it."""
        return anyres.max_image_tokens(self.model) if self.tiled else self.model.num_image_tokens

    def encode(self, image: Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray | TiledImage:
        """Preprocessed exactly as the model's transformers processor does it; raises `ImageError`."""
        if not self.tiled:
            return preprocess(image, self.image, max_pixels)
        pixels = preprocess_anyres(image, self.model, self.image.mean, self.image.std, max_pixels)
        return TiledImage(pixels, *anyres.pack_plan(self.model, (image.height, image.width)))

    def batch(self, rows: int) -> dict[str, np.ndarray]:
        """Zeros for `rows` images: `pixel_values` and, any-resolution, `image_index` / `image_weight` (a row left
        zero is an absent image: no tokens)."""
        size = self.image.size
        if not self.tiled:
            return {"pixel_values": np.zeros((rows, 3, size, size), np.float32)}
        crops, tokens, taps = anyres.max_crops(self.model), self.max_tokens, anyres.taps(self.model)
        return {"pixel_values": np.zeros((rows, crops, 3, size, size), np.float32),
                "image_index": np.zeros((rows, tokens, taps), np.int32),
                "image_weight": np.zeros((rows, tokens, taps), np.float32)}

    def put(self, batch: dict[str, np.ndarray], row: int, encoded: np.ndarray | TiledImage) -> None:
        if not self.tiled:
            batch["pixel_values"][row] = encoded
            return
        batch["pixel_values"][row, :len(encoded.pixels)] = encoded.pixels
        batch["image_index"][row, :len(encoded.index)] = encoded.index
        batch["image_weight"][row, :len(encoded.weight)] = encoded.weight

    def stack(self, encoded: list[np.ndarray | TiledImage | None]) -> dict[str, np.ndarray]:
        """A batch of these images, row i image i (None: a row without one)."""
        batch = self.batch(len(encoded))
        for row, image in enumerate(encoded):
            if image is not None:
                self.put(batch, row, image)
        return batch
