"""LLaVA-style models: vision tower → projector → LLaMA decoder, with image features spliced over image-token
positions. The parts come from the config through two tables: the tower (`VISION_TOWERS`: LLaVA's CLIP, MiniGPT-v2's
EVA) and the projector's shape (`LlavaConfig.projector_shape`: LLaVA's MLP, MiniGPT-v2's concatenate-and-project).

Input ids follow the Hugging Face convention: each image occupies as many copies of `config.image_token_id` as
it has features (`config.num_image_tokens`; an any-resolution image's own count, see `models.tiles`), and the
features of the images in `pixel_values` fill those positions in row-major (batch, position) order. Text-only rows
simply contain no image tokens, so one batch may mix both. A config without `vision` builds the decoder alone: a
text-only language model trained, exported and run by the same code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.models.clip import ClipVisionTower
from vlguard_jax.models.config import LlavaConfig
from vlguard_jax.models.eva import EvaVisionTower
from vlguard_jax.models.layers import Linear, activation, param
from vlguard_jax.models.llama import KVCache, LlamaForCausalLM
from vlguard_jax.models.siglip import SiglipVisionTower
from vlguard_jax.models.tiles import TiledImages, flatten_packed, pack_features
from vlguard_jax.parallel import constrain


VISION_TOWERS = {"clip": ClipVisionTower, "eva": EvaVisionTower, "siglip": SiglipVisionTower}  # `VisionConfig.tower`
Images = jax.Array | TiledImages  # fixed-resolution pixels `[images, 3, H, W]`, or any-resolution crops and plans


class Projector(nnx.Module):
    """`linear` or `mlp{N}x_gelu`: `linear_1 → gelu → linear_2 …` (HF `multi_modal_projector`); `concat{N}`: every N
    adjacent visual tokens concatenated into one (row-major, as MiniGPT-v2's `view(b, t // N, d * N)`), then
    `linear_1` (MiniGPT-v2's `llama_proj`)."""

    def __init__(self, cfg: LlavaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.group, self.depth = cfg.projector_shape
        self.act = activation("gelu")
        d_in = cfg.vision.hidden_size * self.group
        d_out = cfg.text.hidden_size
        for i in range(1, self.depth + 1):
            layer = Linear(d_in if i == 1 else d_out, d_out, ("embed", "mlp") if i == 1 else ("mlp", "embed"),
                           use_bias=cfg.projector_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            setattr(self, f"linear_{i}", layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Each layer's output split by image as the batch is (its weights gathered, as in FSDP): left to XLA, the
        output of a tensor-parallel projector came out split by feature, and moving it to the batch-split rows it
        is spliced into replicated it whole (an involuntary full rematerialization)."""
        images, tokens, width = x.shape
        x = x.reshape(images, tokens // self.group, width * self.group)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"linear_{i}")(x if i == 1 else self.act(x))
            x = constrain(x, ("batch", "length", "mlp" if i < self.depth else "act_embed"))
        return x


def splice_image_features(embeds: jax.Array, is_image: jax.Array, features: jax.Array,
                          row_images: bool = False, counts: jax.Array | None = None) -> jax.Array:
    """Overwrites image-token positions with `features` `[images, tokens, d]`.

    By default images fill image tokens in row-major order (HF), each image `tokens` of them or, given `counts`,
    its own count (the rest of its row of `features` is padding); with `row_images`, row b takes image b
    (static-shape training batches: one image slot per row, zeros for text-only rows).
    """
    if row_images:
        index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
        gathered = jnp.take_along_axis(features.astype(embeds.dtype), index[..., None], axis=1)
    else:
        if counts is None:
            flat, order = features.reshape(-1, features.shape[-1]), None
        else:
            flat, order = flatten_packed(features, counts)
        index = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, flat.shape[0] - 1)
        index = index if order is None else order[index]
        gathered = jnp.take(flat.astype(embeds.dtype), index, axis=0).reshape(embeds.shape)
    return jnp.where(is_image[..., None], gathered, embeds)


class LlavaForConditionalGeneration(nnx.Module):
    """Attribute names mirror the llava-hf checkpoint layout, so conversion is a rename-and-transpose table."""

    def __init__(self, config: LlavaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.config = config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        text_only = config.vision is None  # a language model alone: same decoder, same parameter paths
        self.vision_tower = None if text_only else VISION_TOWERS[config.vision.tower](config.vision, remat=remat, **kw)
        self.multi_modal_projector = None if text_only else Projector(config, **kw)
        # Any-resolution layouts close each row of an image's tile grid with this learned vector (HF `image_newline`)
        self.image_newline = param(rngs, nnx.initializers.normal(config.text.hidden_size ** -0.5),
                                   (config.text.hidden_size,), param_dtype, ("embed",)) if config.anyres else None
        self.language_model = LlamaForCausalLM(config.text, remat=remat, **kw)

    def image_features(self, images: Images) -> jax.Array:
        """Pixels `[images, 3, H, W]` → projected features `[images, num_image_tokens, d_text]`; `TiledImages` →
        each image's crops encoded and packed by its plan, `[images, max tokens, d_text]`."""
        self._check_images(images)
        if not self.config.anyres:
            return self._crop_features(images)
        count, crops = images.pixels.shape[:2]
        features = self._crop_features(images.pixels.reshape(count * crops, *images.pixels.shape[2:]))
        features = features.reshape(count, crops * features.shape[1], features.shape[2])
        newline = constrain(self.image_newline[...], (None,))  # whole, like the class embedding
        return constrain(pack_features(features, newline, images.index, images.weight),
                         ("batch", "length", "act_embed"))

    def _check_images(self, images: Images) -> None:
        if self.vision_tower is None:
            raise ValueError("a text-only model takes no images (it has no vision tower)")
        if self.config.anyres != isinstance(images, TiledImages):
            raise ValueError(f"a {self.config.model_type} model takes "
                             f"{'TiledImages' if self.config.anyres else 'pixels [images, 3, H, W]'}")

    def _crop_features(self, pixel_values: jax.Array) -> jax.Array:
        """`[crops, 3, H, W]` → projected features `[crops, tokens_per_crop, d_text]`."""
        hidden = self.vision_tower(pixel_values, self.config.feature_layer_index)
        if self.config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        return self.multi_modal_projector(hidden)

    def embed(self, input_ids: jax.Array, pixel_values: Images | None = None,
              row_images: bool = False, rows_per_image: int = 1) -> jax.Array:
        if pixel_values is None:  # an image token generated as text keeps its own embedding row, as in HF
            return self.language_model.model.embed_tokens(input_ids)
        self._check_images(pixel_values)
        is_image = input_ids == self.config.image_token_id
        embeds = self.language_model.model.embed_tokens(jnp.where(is_image, 0, input_ids))
        tiled = isinstance(pixel_values, TiledImages)
        counts = pixel_values.token_counts() if tiled else None
        if not (row_images or isinstance(is_image, jax.core.Tracer)):  # eager check; jitted callers validate upstream
            _check_image_tokens(int(is_image.sum()), counts if tiled else
                                [self.config.num_image_tokens] * pixel_values.shape[0])
        features = self.image_features(pixel_values)
        if rows_per_image > 1:  # encoded once, spliced into each of its rows (a preference pair's two answers)
            features = jnp.repeat(features, rows_per_image, axis=0)
        return splice_image_features(embeds, is_image, features, row_images, counts)

    def __call__(self, input_ids: jax.Array, pixel_values: Images | None = None,
                 attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                 dropout_key: jax.Array | None = None, row_images: bool = False, last_only: bool = False,
                 padding: str = "unknown"):
        """Logits `[batch, len, vocab]`; with a `cache`, the pair `(logits, updated cache)`.

        Without `positions`, position ids are `cache_index + arange(len)` (what HF's forward uses);
        left-padded generation passes positions counted over the attention mask instead. `row_images`:
        `pixel_values[b]` is row b's image (see `splice_image_features`); `dropout_key` turns on LoRA dropout;
        `last_only` projects only the last position to the vocabulary (a prefill needs nothing more); `padding`:
        where the rows' padding sits (`right`, `left`; see `models.attention`).
        """
        hidden, cache = self.hidden_states(input_ids, pixel_values, attention_mask, positions, cache, cache_index,
                                           dropout_key, row_images, padding)
        logits = self.language_model.logits(hidden[:, -1:] if last_only else hidden)
        return logits if cache is None else (logits, cache)

    def hidden_states(self, input_ids: jax.Array, pixel_values: Images | None = None,
                      attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                      cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                      dropout_key: jax.Array | None = None, row_images: bool = False, padding: str = "unknown",
                      rows_per_image: int = 1):
        """The decoder's final normed hidden states and the cache: `__call__` without the vocabulary projection
        (a chunked loss projects a slice at a time). With `row_images`, `rows_per_image` consecutive rows share
        `pixel_values[row // rows_per_image]`."""
        batch, length = input_ids.shape
        if attention_mask is None:
            if cache is not None:
                raise ValueError("a cache needs an attention_mask over all of its slots")
            attention_mask = jnp.ones((batch, length), bool)
        if positions is None:
            positions = jnp.broadcast_to(cache_index + jnp.arange(length), (batch, length))
        return self.language_model.model(self.embed(input_ids, pixel_values, row_images, rows_per_image), positions,
                                         attention_mask, cache, cache_index, dropout_key, padding)


def _check_image_tokens(num_tokens: int, per_image) -> None:
    per_image = [int(n) for n in per_image]
    if num_tokens != sum(per_image):
        each = f"{per_image[0]} each" if len(set(per_image)) <= 1 else f"{', '.join(map(str, per_image))}"
        raise ValueError(
            f"input_ids hold {num_tokens} image tokens but {len(per_image)} images need {sum(per_image)} ({each}): "
            f"expand each <image> to its image's tokens, as the LLaVA processor does"
        )
