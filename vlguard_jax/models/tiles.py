"""Any-resolution images on the device: a static-shape form of LLaVA-NeXT's and OneVision's `pack_image_features`.

transformers packs each image's crop features with Python control flow (view, permute, unpad, interpolate, concat
a newline per row): the token count, and so every shape after it, depends on the image's size. Here the host
computes each image's packing once as a plan (`models.anyres.pack_plan`): every packed token is a weighted sum of
at most `taps` crop-feature positions (one for a gather, four for OneVision's bilinear pooling), or the newline.
The device then does one batched gather per tap over padded arrays, so an image of any size runs in the shapes
of its batch: `[images, max crops, 3, S, S]` pixels and `[images, max tokens, taps]` plans.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vlguard_jax.models.anyres import NEWLINE


class TiledImages(NamedTuple):
    """A batch of any-resolution images: `pixels` `[images, crops, 3, S, S]` (the base image, then its tiles; crops
    past an image's own are zeros), `index` and `weight` `[images, tokens, taps]`: packed token t of image i is
    `sum_k weight[i, t, k] * features[i, index[i, t, k]]` over its crops' flattened features (`NEWLINE`: the
    newline vector). Tokens past an image's own have zero weights."""

    pixels: jax.Array
    index: jax.Array
    weight: jax.Array

    def token_counts(self) -> jax.Array:
        """`[images]`: how many packed tokens each image has (its `<image>` expands to as many)."""
        return jnp.sum(jnp.any(self.weight != 0, axis=-1), axis=-1)


def pack_features(features: jax.Array, newline: jax.Array, index: jax.Array, weight: jax.Array) -> jax.Array:
    """`features` `[images, crops * tokens_per_crop, d]` and the plan → packed `[images, tokens, d]` (sums in fp32,
    cast back to the features' dtype)."""
    images, _, width = features.shape
    newline = jnp.broadcast_to(newline.astype(features.dtype), (images, 1, width))
    source = jnp.concatenate([features, newline], axis=1)
    index = jnp.where(index == NEWLINE, source.shape[1] - 1, index)
    packed = jnp.zeros((*index.shape[:2], width), jnp.float32)
    for tap in range(index.shape[-1]):  # static: 1 or 4
        taken = jnp.take_along_axis(source, index[..., tap, None], axis=1)
        packed = packed + weight[..., tap, None].astype(jnp.float32) * taken.astype(jnp.float32)
    return packed.astype(features.dtype)


def flatten_packed(packed: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row-major (HF) order over images of different token counts: `packed` `[images, tokens, d]` → the flat
    `[images * tokens, d]` and, for the k-th image token of the whole batch, its row in it (image i's tokens follow
    image i-1's last one)."""
    images, tokens, width = packed.shape
    starts = jnp.cumsum(counts) - counts
    k = jnp.arange(images * tokens)
    image = jnp.clip(jnp.searchsorted(jnp.cumsum(counts), k, side="right"), 0, images - 1)
    return packed.reshape(images * tokens, width), image * tokens + (k - starts[image])


def images_of(batch: dict) -> jax.Array | TiledImages | None:
    """The model's image input from a batch's arrays (`data.vision_inputs`): its pixels, or with packing plans
    beside them, `TiledImages`; None for a batch without images."""
    if "image_index" in batch:
        return TiledImages(batch["pixel_values"], batch["image_index"], batch["image_weight"])
    return batch.get("pixel_values")
