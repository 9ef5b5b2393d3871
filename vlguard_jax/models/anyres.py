"""Any-resolution tiling (LLaVA-NeXT, LLaVA-OneVision) on the host: the canvas an image is fitted to, how many crops
and image tokens it makes, and the plan by which the device packs its crops' features (`models.tiles`).

An image of (height, width) pixels is resized to fit the best of `config.image_grid_pinpoints` (transformers'
`select_best_resolution`), padded to that canvas and cut into a rows × cols grid of S×S tiles (S =
`vision.image_size`). With the whole image squashed to S×S in front (the base crop), the tower sees
`1 + rows * cols` crops; each gives `tokens_per_crop` = side² tokens on a side × side grid (side = S // patch_size).

transformers' `pack_image_features` lays the tiles' token grids side by side into one (rows·side) × (cols·side)
grid, cuts off the rows or columns that only saw padding (`unpad_image`), and for OneVision shrinks a grid larger
than its `anyres_max_N` budget (about N crops' worth of tokens) by bilinear interpolation. It emits the base crop's
tokens, then the grid row by row, each row followed by the image-newline vector.

That is Python control flow over shapes that depend on the image; `pack_plan` turns it into a static-shape gather.
Index convention: F is one image's projected features flattened to [crops * tokens_per_crop, d], crop 0 the base
image, then the tiles row-major as the processor cuts them, each crop's tokens row-major on its grid. Packed token t
is `sum_k weight[t, k] * F[index[t, k]]`, and `index == NEWLINE` (-1) names the image-newline vector (weight 1).
`taps` is 1 for LLaVA-NeXT (a pure gather, weight 1) and 4 for OneVision (the four bilinear neighbours; a token
that is not pooled, such as every token of an image within its budget, has weights (1, 0, 0, 0) and repeats its
index in the unused taps).
"""

from __future__ import annotations

import math

import numpy as np

from vlguard_jax.models.config import LlavaConfig

NEWLINE = -1  # a plan index naming the image-newline vector
POOL_THRESHOLD = 1.1  # OneVision pools a grid only when it is over this factor (per side) above its budget


def best_resolution(config: LlavaConfig, size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) pinpoint an image of `size` (height, width) is fitted to: the one that keeps the most of
    its pixels after an aspect-preserving resize, ties to the least padding (`select_best_resolution`)."""
    height, width = _image_size(size)
    best, most_kept, least_wasted = None, 0, math.inf
    for canvas_height, canvas_width in _pinpoints(config):
        scale = min(canvas_width / width, canvas_height / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = canvas_width * canvas_height - kept
        if kept > most_kept or (kept == most_kept and wasted < least_wasted):
            best, most_kept, least_wasted = (canvas_height, canvas_width), kept, wasted
    return best


def grid_shape(config: LlavaConfig, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of S×S tiles the image's canvas is cut into."""
    canvas_height, canvas_width = best_resolution(config, size)
    crop = config.vision.image_size
    return canvas_height // crop, canvas_width // crop


def num_crops(config: LlavaConfig, size: tuple[int, int]) -> int:
    """Crops the tower encodes for the image: the base image, then its tiles."""
    rows, cols = grid_shape(config, size)
    return 1 + rows * cols


def max_crops(config: LlavaConfig) -> int:
    """The most crops any image can make: the largest pinpoint's tiles and the base image."""
    crop = config.vision.image_size
    return 1 + max((height // crop) * (width // crop) for height, width in _pinpoints(config))


def image_tokens(config: LlavaConfig, size: tuple[int, int]) -> int:
    """Packed image tokens (and `<image>` tokens the processor expands to) for an image of `size` (height, width):
    the base crop's, then each row of the unpadded, possibly pooled grid and its newline."""
    _, (rows, cols) = _packed_grid(config, size)
    return config.tokens_per_crop + rows * (cols + 1)


def pack_plan(config: LlavaConfig, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(index int32 [T, taps], weight float32 [T, taps]), T = `image_tokens(config, size)`: packed token t is
    `sum_k weight[t, k] * F[index[t, k]]` (see the module docstring for F and `NEWLINE`)."""
    (top, bottom, left, right), (rows, cols) = _packed_grid(config, size)
    source = _grid_index(config, size)[top:bottom, left:right]
    width = taps(config)
    grid = _whole(source, width) if source.shape == (rows, cols) else _bilinear_taps(source, rows, cols)
    newline = _whole(np.full((rows, 1), NEWLINE), width)
    base = _whole(np.arange(config.tokens_per_crop), width)
    lines = [np.concatenate(parts, axis=1) for parts in zip(grid, newline)]  # each grid row, then its newline
    index, weight = (np.concatenate([first, then.reshape(-1, width)]) for first, then in zip(base, lines))
    return index.astype(np.int32), weight


def max_image_tokens(config: LlavaConfig) -> int:
    """The most image tokens any image can have: over every window unpadding can leave on each canvas's token grid
    (all of it, or fewer rows, or fewer columns), the packed rows with their newlines. Pooling keeps OneVision's
    near its budget, but a thinner window packs more rows, each with a newline, so every window is counted."""
    side, crop, most = _crop_side(config), config.vision.image_size, 0
    for height, width in _pinpoints(config):
        rows, cols = height // crop * side, width // crop * side
        for window in [(r, cols) for r in range(1, rows + 1)] + [(rows, c) for c in range(1, cols + 1)]:
            packed_rows, packed_cols = _pooled(config, *window)
            most = max(most, packed_rows * (packed_cols + 1))
    return config.tokens_per_crop + most


def taps(config: LlavaConfig) -> int:
    """Feature positions each packed token sums: 4 where OneVision may pool, else 1."""
    return 4 if _pools(config) else 1


def _image_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(side) for side in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"an image of {height}x{width} (height x width) pixels has nothing to tile")
    return height, width


def _pinpoints(config: LlavaConfig) -> tuple[tuple[int, int], ...]:
    """The config's canvases, refused where tiling is undefined: no pinpoints (a fixed-resolution model), or a
    canvas that is not a whole number of crops (the processor would cut ragged edge tiles the model cannot place)."""
    if not config.anyres or not config.image_grid_pinpoints:
        raise ValueError(f"a {config.layout} model has no image_grid_pinpoints: it does not tile images "
                         f"(any-resolution models: llava_next, llava_onevision)")
    crop = config.vision.image_size
    ragged = [pinpoint for pinpoint in config.image_grid_pinpoints if pinpoint[0] % crop or pinpoint[1] % crop]
    if ragged:
        raise ValueError(f"image_grid_pinpoints {ragged} are not multiples of the {crop}-pixel crop")
    return config.image_grid_pinpoints


def _crop_side(config: LlavaConfig) -> int:
    """Tokens along each side of one crop's grid; the packing needs one token per patch (no class token kept, no
    projector grouping), as transformers' `view(rows, cols, side, side, d)` does."""
    side = config.vision.image_size // config.vision.patch_size
    if config.tokens_per_crop != side * side:
        raise ValueError(f"a crop gives {config.tokens_per_crop} tokens, not one per patch of its {side}x{side} "
                         f"grid: any-resolution packing needs the grid (check vision_feature_select_strategy and "
                         f"projector_type)")
    return side


def _pools(config: LlavaConfig) -> bool:
    return config.model_type == "llava_onevision"


def _pool_budget(config: LlavaConfig) -> int:
    """OneVision's N of `anyres_max_N`: the grid may hold about N crops' worth of tokens."""
    if config.vision_aspect_ratio is None:
        raise ValueError("a llava_onevision config needs vision_aspect_ratio ('anyres_max_N'; transformers' "
                         "default is 'anyres_max_9')")
    return int(config.vision_aspect_ratio.removeprefix("anyres_max_"))


def _packed_grid(config: LlavaConfig, size: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """((top, bottom, left, right) of the unpadded window on the full token grid, (rows, cols) of the grid that is
    packed: the window itself, or OneVision's pooled size of it)."""
    window = _unpadded_window(config, size)
    top, bottom, left, right = window
    pooled = _pooled(config, bottom - top, right - left)
    if min(pooled) == 0 < min(bottom - top, right - left):  # pooling emptied it (unpadding alone may, as in HF)
        raise ValueError(f"an image of {size} (height, width) pools its {bottom - top}x{right - left} token grid to "
                         f"{pooled}: too thin for {config.vision_aspect_ratio} (transformers cannot pack it either)")
    return window, pooled


def _pooled(config: LlavaConfig, rows: int, cols: int) -> tuple[int, int]:
    """The (rows, cols) a rows × cols unpadded grid is packed at: itself, or OneVision's bilinear shrink of a grid
    over its budget."""
    if not _pools(config):
        return rows, cols
    side = _crop_side(config)
    ratio = math.sqrt(rows * cols / (_pool_budget(config) * side**2))
    return (rows, cols) if ratio <= POOL_THRESHOLD else (int(rows // ratio), int(cols // ratio))


def _unpadded_window(config: LlavaConfig, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the full token grid that saw the image rather than the canvas padding, rounded
    as `unpad_image` rounds it (an extreme aspect ratio may leave no rows at all, as it does there)."""
    height, width = _image_size(size)
    rows, cols = grid_shape(config, size)
    side = _crop_side(config)
    grid_height, grid_width = rows * side, cols * side
    if width / height > grid_width / grid_height:  # wider than the grid: padding above and below
        kept = int(round(height * (grid_width / width), 7))
        padding = (grid_height - kept) // 2
        return padding, grid_height - padding, 0, grid_width
    kept = int(round(width * (grid_height / height), 7))
    padding = (grid_width - kept) // 2
    return 0, grid_height, padding, grid_width - padding


def _grid_index(config: LlavaConfig, size: tuple[int, int]) -> np.ndarray:
    """[rows·side, cols·side]: each token of the full tile grid as an index into F (tiles from crop 1 on)."""
    rows, cols = grid_shape(config, size)
    side = _crop_side(config)
    y = np.arange(rows * side)[:, None]
    x = np.arange(cols * side)[None, :]
    crop = 1 + (y // side) * cols + x // side
    return crop * side * side + (y % side) * side + x % side


def _whole(index: np.ndarray, taps: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of `index` taken as it is: weight 1 on the first tap; the other taps repeat the index with weight 0, so
    a gather over them stays in bounds."""
    weight = np.zeros((*index.shape, taps), np.float32)
    weight[..., 0] = 1
    return np.repeat(index[..., None], taps, axis=-1), weight


def _bilinear_taps(source: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """`source` [H, W] feature indices shrunk to rows × cols as torch's `interpolate(mode="bilinear",
    align_corners=False)` does: (index [rows, cols, 4], weight [rows, cols, 4]), the four neighbours in the order
    (upper-left, upper-right, lower-left, lower-right)."""
    (top, bottom), (weight_top, weight_bottom) = _linear_taps(source.shape[0], rows)
    (left, right), (weight_left, weight_right) = _linear_taps(source.shape[1], cols)
    index = np.stack([source[y[:, None], x[None, :]] for y in (top, bottom) for x in (left, right)], axis=-1)
    weight = np.stack([wy[:, None] * wx[None, :] for wy in (weight_top, weight_bottom)
                       for wx in (weight_left, weight_right)], axis=-1)
    return index, weight


def _linear_taps(in_size: int, out_size: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """One axis of torch's CPU bilinear resize (`area_pixel_compute_source_index`, `guard_index_and_lambda`) in its
    float32 arithmetic: for each output position, its (lower, upper) source positions and their weights. torch
    computes the source position `scale * (i + 0.5) - 0.5` as a fused multiply-add, rounded once: the float32
    operands' product is exact in float64, so one cast after the float64 arithmetic rounds the same (two float32
    roundings would move some weights by an ulp of the position, ~4e-6)."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    source = np.maximum((np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32), 0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = lower + (lower < in_size - 1)
    weight_upper = np.clip(source - lower, 0, 1).astype(np.float32)
    return (lower, upper), (np.float32(1) - weight_upper, weight_upper)
