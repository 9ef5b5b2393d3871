"""The attacked image: the model's input pixels in [0, 1], before the processor's normalisation.

The attack moves what the processor would hand to its normalisation: the initial image padded / resized / cropped
to the model's input size by that family's processor (`data.images.resized`), rescaled to [0, 1]. The result is
saved at that size as an 8-bit PNG, which the same processor maps back to the same pixels (its geometry is the
identity on a square image of its own size), so an evaluation sees exactly the attacked image.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from vlguard_jax import storage
from vlguard_jax.data.images import ImageConfig, resized, to_rgb, unit_pixels

NOISE = "noise"  # `--image noise`: a uniformly random 8-bit image (Qi et al.'s unconstrained start)


def initial_image(source: str, config: ImageConfig, seed: int) -> np.ndarray:
    """uint8 [size, size, 3]: the image file at `source` through the processor's geometry, or `noise`."""
    if source == NOISE:
        return np.random.default_rng(seed).integers(0, 256, (config.size, config.size, 3), dtype=np.uint8)
    try:
        data = storage.path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            return resized(to_rgb(image), config)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"--image {source}: cannot read it as an image ({e}); give a PNG/JPEG file or "
                         f"'noise'") from None


def quantize(pixels: np.ndarray, origin: np.ndarray, epsilon: float | None) -> np.ndarray:
    """float [3, H, W] in [0, 1] → uint8 [H, W, 3], rounded and kept within `epsilon` of the uint8 `origin` in
    every channel value (rounding alone could step one level past a radius that is not a whole number of levels)."""
    levels = np.rint(np.clip(np.asarray(pixels, np.float64), 0, 1) * 255).transpose(1, 2, 0)
    if epsilon is not None:
        radius = math.floor(epsilon * 255 + 1e-6)
        levels = np.clip(levels, origin.astype(np.int64) - radius, origin.astype(np.int64) + radius)
    return levels.astype(np.uint8)


def save_png(target: storage.PathLike, pixels: np.ndarray) -> None:
    """uint8 [H, W, 3] → a lossless PNG, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    storage.write_bytes(target, buffer.getvalue())


__all__ = ["NOISE", "initial_image", "quantize", "save_png", "unit_pixels"]
