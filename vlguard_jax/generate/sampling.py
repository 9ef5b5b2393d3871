"""What both engines share: sampling settings, prompt buckets, the token pick, the model call and the check of a
prompt's image.

Logits are sampled in fp32 whatever the compute dtype; greedy by default; temperature and top-p are seeded.
`min_new_tokens` keeps stop tokens out of a row's first tokens, as transformers' `generate(min_new_tokens=…)`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vlguard_jax.data.vision_inputs import TiledImage, VisionInputs
from vlguard_jax.models.llama import LlamaForCausalLM

# Up to 4096 for fixed-resolution prompts; an any-resolution image alone may take more (OneVision's anyres_max_9 at
# 384 px: up to 8,829 image tokens)
PROMPT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    min_new_tokens: int = 0  # stop tokens are banned before this many new tokens (VLGuard's eval uses 1)


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cut = cumulative - jax.nn.softmax(sorted_logits, axis=-1) >= top_p
        sorted_logits = jnp.where(cut, -jnp.inf, sorted_logits)
        logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def pick(logits: jax.Array, key: jax.Array, generated: jax.Array, stop_ids: jax.Array,
         sampling: SamplingConfig) -> jax.Array:
    """Next token of each row from `[rows, vocab]` logits. `generated`: tokens each row has produced before this
    one (a scalar, or one per row); `stop_ids`: `[stops]` for every row or `[rows, stops]` (-1 pads)."""
    if sampling.min_new_tokens:
        vocab = jnp.arange(logits.shape[-1])
        stops = (vocab == jnp.atleast_2d(stop_ids)[..., None]).any(axis=-2)  # [1 or rows, vocab]
        early = jnp.reshape(generated, (-1, 1)) < sampling.min_new_tokens
        logits = jnp.where(stops & early, -jnp.inf, logits)
    return sample(logits, key, sampling.temperature, sampling.top_p)


def check_image(vision: VisionInputs | None, prompt: np.ndarray, image: np.ndarray | TiledImage | None,
                image_token_id: int | None, where: str) -> None:
    """Refuses an image the model cannot take with `prompt` (`where` names the prompt): any image for a text-only
    model (`vision` None), pixels for an any-resolution model or a `TiledImage` for a fixed-resolution one, and a
    `TiledImage` of another token count than the prompt's image tokens (fed an image per row, the model would not
    notice)."""
    if image is None:
        return
    if vision is None:
        raise ValueError(f"{where}: a text-only model takes no images: pass None as its image")
    if isinstance(image, TiledImage) != vision.tiled:
        wanted = "a TiledImage" if vision.tiled else "a [3, S, S] pixel array"
        raise ValueError(f"{where}: a {vision.model.model_type} model takes {wanted} as an image "
                         f"(data.vision_inputs.VisionInputs.encode)")
    if vision.tiled and (tokens := int(np.sum(np.asarray(prompt) == image_token_id))) != len(image.index):
        raise ValueError(f"{where}: the prompt holds {tokens} image tokens but its image has {len(image.index)}: "
                         f"expand <image> to VisionInputs.tokens of the image's (height, width)")


def decoder(model) -> LlamaForCausalLM:
    """The language model of a LLaVA, or a text-only decoder itself."""
    return model if isinstance(model, LlamaForCausalLM) else model.language_model


def forward(model, input_ids, images, attention_mask, positions, cache=None, cache_index=0):
    """Last-position logits of either kind of model (with a cache, and the updated cache); `images`: row b's image
    in row b (pixels or `TiledImages`; a text-only decoder takes none: None). `cache_index`: one write offset, or
    one per row. Prompts are left-padded (what lets attention kernels take a prefill's padding)."""
    if isinstance(model, LlamaForCausalLM):
        return model(input_ids, attention_mask, positions, cache, cache_index, last_only=True, padding="left")
    return model(input_ids, images, attention_mask, positions, cache, cache_index, row_images=True,
                 last_only=True, padding="left")
