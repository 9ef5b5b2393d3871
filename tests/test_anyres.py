"""Any-resolution tiling (LLaVA-NeXT, OneVision) against transformers: the canvas, crop and token counts, the pixels
of every crop (bit for bit), and the packing plan applied to random features against `pack_image_features`."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaNextConfig,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextModel,
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

from vlguard_jax.data.anyres_images import preprocess_anyres
from vlguard_jax.data.images import ImageError
from vlguard_jax.models import anyres
from vlguard_jax.models.config import LlavaConfig, SiglipVisionConfig, TextConfig, VisionConfig

RNG = np.random.default_rng(0)
TEXT = TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                  head_dim=8)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # llava-hf's OneVision preprocessor_config.json


def _next(vision: VisionConfig, pinpoints) -> LlavaConfig:
    return LlavaConfig(vision=vision, text=TEXT, model_type="llava_next", image_grid_pinpoints=tuple(pinpoints))


def _onevision(vision: SiglipVisionConfig, pinpoints, budget: str) -> LlavaConfig:
    return LlavaConfig(vision=vision, text=TEXT, model_type="llava_onevision", vision_feature_layer=-1,
                       vision_feature_select_strategy="full", image_grid_pinpoints=tuple(pinpoints),
                       vision_aspect_ratio=budget)


def _grid(crop: int, most: int) -> list[tuple[int, int]]:
    """OneVision's pinpoints: every canvas of a × b crops, a, b in 1..most."""
    return [(crop * a, crop * b) for a in range(1, most + 1) for b in range(1, most + 1)]


TINY_VISION = dict(hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, image_size=42, patch_size=14)
CONFIGS = {  # the published settings, and tiny ones (3x3 tokens a crop) where OneVision pools most images
    "next": _next(VisionConfig(), [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]),
    "onevision": _onevision(SiglipVisionConfig(), _grid(384, 6), "anyres_max_9"),
    "tiny_next": _next(VisionConfig(**TINY_VISION), [(42, 84), (84, 42), (84, 84), (126, 42), (42, 126)]),
    "tiny_onevision": _onevision(SiglipVisionConfig(**TINY_VISION), _grid(42, 4), "anyres_max_1"),
}
MEAN_STD = {"llava_next": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "llava_onevision": (SIGLIP_MEAN, SIGLIP_STD)}


def _noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(_noise(180, 260)).quantize(32)
    image.info["transparency"] = 3
    return image


IMAGES = {  # (height, width) in the name's sense; PIL sizes are (width, height)
    "tall": lambda: Image.fromarray(_noise(600, 200)),
    "wide": lambda: Image.fromarray(_noise(300, 900)),
    "square": lambda: Image.fromarray(_noise(400, 400)),
    "tiny": lambda: Image.fromarray(_noise(5, 7)),
    "rgba": lambda: Image.fromarray(_noise(250, 333, 4), "RGBA"),
    "palette_transparent": _palette_with_transparency,
    "gray": lambda: Image.fromarray(_noise(333, 222, 1), "L"),
    "sliver": lambda: Image.fromarray(_noise(40, 1000)),
    "pinpoint": lambda: Image.fromarray(_noise(336, 672)),
    "large": lambda: Image.fromarray(_noise(1200, 900)),  # OneVision pools it (a 4x3 canvas, over anyres_max_9)
}


# --- transformers' side ---------------------------------------------------------------------------------------


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that knows `<image>` (id 1): enough for the processors' placeholder expansion."""
    vocab = {"<unk>": 0, "<image>": 1, "<video>": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   additional_special_tokens=["<image>", "<video>"])


class _OnevisionImagesOnly(LlavaOnevisionProcessor):
    """transformers' OneVision processor without a video processor (its class needs torchvision, unusable here);
    images go through the unchanged processor code."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)


@functools.cache
def _processor(name: str):
    """The processor as the llava-hf checkpoints configure it for `CONFIGS[name]`."""
    config = CONFIGS[name]
    crop, pinpoints = config.vision.image_size, [list(p) for p in config.image_grid_pinpoints]
    mean, std = MEAN_STD[config.model_type]
    if config.model_type == "llava_next":
        images = LlavaNextImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
                                            image_grid_pinpoints=pinpoints, image_mean=mean, image_std=std)
        return LlavaNextProcessor(image_processor=images, tokenizer=_tokenizer(), patch_size=config.vision.patch_size,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)
    images = LlavaOnevisionImageProcessorPil(size={"height": crop, "width": crop}, image_grid_pinpoints=pinpoints,
                                             image_mean=mean, image_std=std)
    return _OnevisionImagesOnly(image_processor=images, tokenizer=_tokenizer(), video_processor=None,
                                num_image_tokens=config.tokens_per_crop, vision_feature_select_strategy="full",
                                vision_aspect_ratio=config.vision_aspect_ratio)


@functools.cache
def _processed(name: str, image_name: str) -> tuple[Image.Image, dict]:
    """An image and what the processor makes of it with one `<image>` prompt (numpy)."""
    image = IMAGES[image_name]()
    return image, _processor(name)(images=image, text="<image>", return_tensors="np")


def _hf_pack(config: LlavaConfig, features: np.ndarray, newline: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """transformers' `pack_image_features`, bound to a stand-in model holding only the HF config it reads."""
    vision = {"image_size": config.vision.image_size, "patch_size": config.vision.patch_size}
    pinpoints = [list(p) for p in config.image_grid_pinpoints]
    sizes = torch.tensor([size])
    if config.model_type == "llava_next":
        model = SimpleNamespace(config=LlavaNextConfig(vision_config={"model_type": "clip_vision_model", **vision},
                                                       image_grid_pinpoints=pinpoints))
        packed, _ = LlavaNextModel.pack_image_features(model, [torch.from_numpy(features)], sizes, "default",
                                                       torch.from_numpy(newline))
    else:
        model = SimpleNamespace(config=LlavaOnevisionConfig(
            vision_config={"model_type": "siglip_vision_model", **vision}, image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=config.vision_aspect_ratio))
        packed, _ = LlavaOnevisionModel.pack_image_features(model, [torch.from_numpy(features)], sizes,
                                                            torch.from_numpy(newline), config.vision_aspect_ratio)
    return packed[0].numpy()


def _plan_pack(index: np.ndarray, weight: np.ndarray, features: np.ndarray, newline: np.ndarray) -> np.ndarray:
    """The plan applied as its docstring says: a weighted sum over taps of rows of F, -1 naming the newline."""
    flat = features.reshape(-1, features.shape[-1])
    rows = np.where(index[..., None] == anyres.NEWLINE, newline, flat[np.maximum(index, 0)])
    return (weight[..., None] * rows).sum(axis=1)


def _packable(config: LlavaConfig, size: tuple[int, int]) -> bool:
    """Whether `anyres` takes the size; where it refuses one (a grid too thin for OneVision's budget pools to no
    rows), transformers' model fails on it too."""
    try:
        anyres.image_tokens(config, size)
        return True
    except ValueError:
        features = np.zeros((anyres.num_crops(config, size), config.tokens_per_crop, 1), np.float32)
        with pytest.raises(RuntimeError, match="greater than 0"):
            _hf_pack(config, features, np.zeros(1, np.float32), size)
        return False


def _random_sizes(count: int, largest: int) -> list[tuple[int, int]]:
    """Log-uniform (height, width) pairs from 1 to `largest`, extreme aspect ratios included."""
    return [tuple(int(s) for s in np.exp(RNG.uniform(0, np.log(largest), 2)).round().clip(1)) for _ in range(count)]


# --- pixels ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_name", IMAGES)
@pytest.mark.parametrize("name", ["next", "onevision"])
def test_crops_match_processor_bit_for_bit(name, image_name):
    config = CONFIGS[name]
    image, expected = _processed(name, image_name)
    actual = preprocess_anyres(image, config, *MEAN_STD[config.model_type])
    crop = config.vision.image_size
    assert actual.dtype == np.float32
    assert actual.shape == (anyres.num_crops(config, (image.height, image.width)), 3, crop, crop)
    np.testing.assert_array_equal(actual, expected["pixel_values"][0])


def test_a_canvas_over_max_pixels_is_refused_before_it_is_made():
    image = IMAGES["square"]()  # 400x400: fitted to the 672x672 canvas, 451,584 pixels
    with pytest.raises(ImageError, match="672x672 canvas"):
        preprocess_anyres(image, CONFIGS["next"], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, max_pixels=400_000)


def test_an_empty_image_is_an_image_error():
    with pytest.raises(ImageError, match="no pixels"):
        preprocess_anyres(Image.new("RGB", (0, 5)), CONFIGS["next"], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


# --- counts ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_name", IMAGES)
@pytest.mark.parametrize("name", ["next", "onevision"])
def test_image_tokens_match_processor_expansion(name, image_name):
    image, processed = _processed(name, image_name)
    assert anyres.image_tokens(CONFIGS[name], (image.height, image.width)) == int((processed["input_ids"] == 1).sum())
    assert processed["image_sizes"][0].tolist() == [image.height, image.width]


@pytest.mark.parametrize("name", CONFIGS)
def test_counts_match_transformers_over_sizes(name):
    config = CONFIGS[name]
    crop, pinpoints = config.vision.image_size, [list(p) for p in config.image_grid_pinpoints]
    sizes = _random_sizes(300, 8 * crop) + [(1, 1), (1, 20_000), (20_000, 1), (crop, crop)]
    expected_tokens = _processor(name)._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    for size, tokens in zip(sizes, expected_tokens):
        assert anyres.best_resolution(config, size) == tuple(select_best_resolution(size, pinpoints)), size
        assert anyres.grid_shape(config, size) == get_anyres_image_grid_shape(size, pinpoints, crop), size
        assert anyres.num_crops(config, size) == image_size_to_num_patches(size, pinpoints, crop), size
        assert not _packable(config, size) or anyres.image_tokens(config, size) == tokens, size


@pytest.mark.parametrize("name", CONFIGS)
def test_max_crops_is_the_largest_pinpoints_count(name):
    config = CONFIGS[name]
    pinpoints = [list(p) for p in config.image_grid_pinpoints]
    assert anyres.max_crops(config) == max(image_size_to_num_patches(p, pinpoints, config.vision.image_size)
                                           for p in pinpoints)


# --- packing --------------------------------------------------------------------------------------------------

PACK_SIZES = {  # per config: (height, width) covering tall, wide, square, extreme; `pooled` ones OneVision pools
    "next": [(600, 200), (300, 900), (400, 400), (40, 1000), (1, 10_000), (1200, 900)],
    "onevision": [(600, 200), (300, 900), (400, 400), (40, 1000), (1200, 900), (1500, 1500), (2000, 700)],
    "tiny_next": [(80, 20), (20, 80), (50, 50), (3, 200), (33, 61)],
    "tiny_onevision": [(80, 20), (20, 80), (50, 50), (3, 60), (4, 100), (33, 61), (160, 160), (170, 90), (30, 40)],
}
POOLED = {"onevision": {(1200, 900), (1500, 1500), (2000, 700)},
          "tiny_onevision": {(50, 50), (33, 61), (160, 160), (170, 90)}}


@pytest.mark.parametrize("name", CONFIGS)
def test_pack_plan_matches_pack_image_features(name):
    config = CONFIGS[name]
    taps = 4 if config.model_type == "llava_onevision" else 1
    width = 5
    for size in PACK_SIZES[name] + [size for size in _random_sizes(10, 6 * config.vision.image_size)
                                    if _packable(config, size)]:
        features = RNG.standard_normal((anyres.num_crops(config, size), config.tokens_per_crop, width), np.float32)
        newline = RNG.standard_normal(width, np.float32)
        index, weight = anyres.pack_plan(config, size)
        assert index.dtype == np.int32 and weight.dtype == np.float32
        assert index.shape == weight.shape == (anyres.image_tokens(config, size), taps)
        np.testing.assert_allclose(weight.sum(axis=1), 1, rtol=0, atol=1e-6, err_msg=str(size))
        expected = _hf_pack(config, features, newline, size)
        np.testing.assert_allclose(_plan_pack(index, weight, features, newline), expected, rtol=0, atol=1e-6,
                                   err_msg=str(size))


@pytest.mark.parametrize("name", ["onevision", "tiny_onevision"])
def test_onevision_pools_the_grids_over_its_budget(name):
    """The sizes above that `test_pack_plan_matches_pack_image_features` checks pooled are the ones it meant."""
    pooled = {size for size in PACK_SIZES[name] if np.count_nonzero(anyres.pack_plan(CONFIGS[name], size)[1][:, 1:])}
    assert pooled == POOLED[name]


def test_plan_starts_with_the_base_crop_and_ends_each_row_with_a_newline():
    config = CONFIGS["next"]
    index, weight = anyres.pack_plan(config, (400, 400))  # 672x672 canvas: a 48x48 token grid, nothing unpadded
    assert np.array_equal(index[:576, 0], np.arange(576))
    rows = index[576:, 0].reshape(48, 49)
    assert np.all(rows[:, -1] == anyres.NEWLINE) and np.all(weight[576:, 0] == 1)
    assert rows[0, 24] == 2 * 576  # the grid's top row crosses into the second tile (crop 2) after 24 tokens
    assert rows[24, 0] == 3 * 576  # and its 25th row starts the bottom-left tile (crop 3)


# --- refusals -------------------------------------------------------------------------------------------------

def test_a_grid_pooled_to_no_rows_is_refused_where_transformers_fails():
    config = CONFIGS["tiny_onevision"]  # (2, 158): a 1x12 token grid, over anyres_max_1, pools to 0x10
    with pytest.raises(ValueError, match="too thin"):
        anyres.pack_plan(config, (2, 158))
    assert not _packable(config, (2, 158))


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-3, 4)])
def test_a_zero_size_image_is_refused(size):
    with pytest.raises(ValueError, match="nothing to tile"):
        anyres.image_tokens(CONFIGS["next"], size)


def test_a_config_without_pinpoints_is_refused():
    with pytest.raises(ValueError, match="does not tile"):
        anyres.pack_plan(LlavaConfig(), (336, 336))


def test_pinpoints_that_are_not_whole_crops_are_refused():
    with pytest.raises(ValueError, match="not multiples"):
        anyres.best_resolution(_next(VisionConfig(), [(336, 500)]), (300, 400))


def test_onevision_without_a_pooling_budget_is_refused():
    config = _onevision(SiglipVisionConfig(), _grid(384, 2), None)
    with pytest.raises(ValueError, match="vision_aspect_ratio"):
        anyres.image_tokens(config, (300, 400))
