"""Pixels of an any-resolution image (LLaVA-NeXT, LLaVA-OneVision): the base crop and the tiles of its canvas,
bit-identical to transformers' `LlavaNextImageProcessorPil` and `LlavaOnevisionImageProcessorPil` as the llava-hf
checkpoints configure them (size = crop = the tower's image size, bicubic, rescale 1/255, normalize).

For a single image the two processors do the same thing; only their mean and std differ (NeXT: CLIP's; OneVision:
SigLIP's 0.5), which the caller passes. The image goes to RGB (transparency onto white, `images.to_rgb`); the base
crop is the whole image resized to S×S (`images.preprocess` in "resize" mode); the tiles come from resizing the
image, keeping its aspect ratio, to fit its best canvas (`models.anyres.best_resolution`), centring it on a black
(zero before normalizing) canvas and cutting that row-major into S×S tiles. Their order is the one
`models.anyres.pack_plan` indexes features by. (OneVision's prompts with several images instead pad each image to
one square crop; that path is not this one.)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vlguard_jax.data.images import (MAX_PIXELS, ImageConfig, ImageError, _check_buffer, normalize, preprocess,
                                     to_rgb)
from vlguard_jax.models.anyres import best_resolution
from vlguard_jax.models.config import LlavaConfig


def preprocess_anyres(image: Image.Image, config: LlavaConfig, mean: tuple[float, float, float],
                      std: tuple[float, float, float], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any PIL mode → float32 [num_crops, 3, S, S]: the base crop, then the tiles (`models.anyres.num_crops`); an
    ImageError, before it is made, where the canvas would hold more than `max_pixels` pixels."""
    if image.width == 0 or image.height == 0:
        raise ImageError(f"a {image.width}x{image.height} image has no pixels to tile")
    crop = config.vision.image_size
    rgb = to_rgb(image)
    base = preprocess(rgb, ImageConfig(size=crop, mode="resize", mean=mean, std=std), max_pixels)
    canvas_height, canvas_width = best_resolution(config, (image.height, image.width))
    _check_buffer(image, f"fitted to a {canvas_width}x{canvas_height} canvas", canvas_width * canvas_height,
                  max_pixels)
    canvas = normalize(_fit_to_canvas(rgb, canvas_height, canvas_width), mean, std)
    tiles = canvas.reshape(3, canvas_height // crop, crop, canvas_width // crop, crop).transpose(1, 3, 0, 2, 4)
    return np.concatenate([base[None], tiles.reshape(-1, 3, crop, crop)])


def _fit_to_canvas(image: Image.Image, canvas_height: int, canvas_width: int) -> np.ndarray:
    """uint8 [H, W, 3]: `image` resized (bicubic) to fill the canvas along one side and centred on black, as the
    processors' `_resize_for_patching` (`get_patch_output_size`: the other side rounded up) and `_pad_for_patching`
    (the odd pixel of padding after the image) do."""
    scale_width, scale_height = canvas_width / image.width, canvas_height / image.height
    if scale_width < scale_height:
        width, height = canvas_width, min(math.ceil(image.height * scale_width), canvas_height)
    else:
        width, height = min(math.ceil(image.width * scale_height), canvas_width), canvas_height
    resized = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    canvas = np.zeros((canvas_height, canvas_width, 3), np.uint8)
    top, left = (canvas_height - height) // 2, (canvas_width - width) // 2
    canvas[top: top + height, left: left + width] = resized
    return canvas
