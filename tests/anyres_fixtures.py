"""Tiny random LLaVA-NeXT (CLIP + Mistral) and LLaVA-OneVision (SigLIP + Qwen2) models built offline with
transformers, at 28-px crops of 2×2 patches so that tiling, unpadding, newline rows and OneVision's pooling all
happen on images of a few dozen pixels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaOnevisionConfig,
                          LlavaOnevisionForConditionalGeneration, MistralConfig, Qwen2Config, SiglipVisionConfig)

from hf_fixtures import scale_weights

IMAGE_TOKEN = 100
VOCAB = 128
CROP = 28
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=CROP,
              patch_size=14)
# Canvases of 1–3 crops a side (as the published ones are of 1–6), and a pooling budget that some of the test
# images exceed (OneVision's "anyres_max_9" at 9 crops' worth of tokens)
PINPOINTS = [[CROP * a, CROP * b] for a in range(1, 4) for b in range(1, 4)]
NEXT_PINPOINTS = [[CROP, 2 * CROP], [2 * CROP, CROP], [2 * CROP, 2 * CROP], [3 * CROP, CROP], [CROP, 3 * CROP]]
ASPECT = "anyres_max_2"
# (height, width): tall, wide, square, and one whose grid the pooling shrinks
SIZES = [(70, 30), (30, 80), (50, 50), (84, 84)]


def build_next(seed: int = 0, sliding_window: int | None = 6) -> LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**VISION),
                             text_config=MistralConfig(**TEXT, sliding_window=sliding_window),
                             image_token_index=IMAGE_TOKEN, image_grid_pinpoints=NEXT_PINPOINTS,
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
    return scale_weights(LlavaNextForConditionalGeneration(config).eval())


def onevision_config(image_token: int = IMAGE_TOKEN) -> LlavaOnevisionConfig:
    """The tiny OneVision's transformers config (no weights: what the data pipeline needs of the model)."""
    return LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**VISION, vision_use_head=False),
                                text_config=Qwen2Config(**TEXT, rope_theta=1e6, tie_word_embeddings=True),
                                image_token_index=image_token, image_grid_pinpoints=PINPOINTS,
                                vision_aspect_ratio=ASPECT, tie_word_embeddings=True)


def build_onevision(seed: int = 0) -> LlavaOnevisionForConditionalGeneration:
    torch.manual_seed(seed)
    return scale_weights(LlavaOnevisionForConditionalGeneration(onevision_config()).eval())


BUILDERS = {"llava_next": build_next, "llava_onevision": build_onevision}


def images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)) for h, w in sizes]
