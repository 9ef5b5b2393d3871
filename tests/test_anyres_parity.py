"""LLaVA-NeXT and LLaVA-OneVision: our logits equal transformers' fp32 ones over images of three aspect ratios (and
one OneVision pools) with a text-only row in the same batch, our preprocessing feeding ours and transformers' own
processor feeding theirs; the export loads back into transformers."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

import vlguard_jax
from anyres_fixtures import BUILDERS, CROP, IMAGE_TOKEN, SIZES, images
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models import anyres
from vlguard_jax.models.tiles import TiledImages, images_of

TOL = 1e-4
HF_CLASSES = {"llava_next": LlavaNextForConditionalGeneration,
              "llava_onevision": LlavaOnevisionForConditionalGeneration}


def hf_processor(hf):
    config = hf.config
    pinpoints = config.image_grid_pinpoints
    if config.model_type == "llava_next":
        return LlavaNextImageProcessorPil(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP},
                                          image_grid_pinpoints=pinpoints, image_mean=OPENAI_CLIP_MEAN,
                                          image_std=OPENAI_CLIP_STD)
    return LlavaOnevisionImageProcessorPil(size={"height": CROP, "width": CROP}, image_grid_pinpoints=pinpoints,
                                           image_mean=(0.5,) * 3, image_std=(0.5,) * 3)


def mixed_batch(inputs: VisionInputs, sizes, seed: int = 0):
    """One row per image (left padding on one), then a text-only row; each image's `<image>` expanded to its own
    count, as the processors expand it."""
    rng = np.random.RandomState(seed)
    counts = [inputs.tokens(size) for size in sizes]
    length = max(counts) + 9
    ids = rng.randint(3, IMAGE_TOKEN, size=(len(sizes) + 1, length))
    mask = np.ones_like(ids)
    for row, count in enumerate(counts):
        pad = 2 if row == 1 else 0
        mask[row, :pad], ids[row, :pad] = 0, 0
        ids[row, pad + 2:pad + 2 + count] = IMAGE_TOKEN
    mask[-1, -3:], ids[-1, -3:] = 0, 0
    return ids, mask


@nnx.jit
def forward(model, ids, images, mask):
    return model(ids, images, mask)


@pytest.fixture(scope="module", params=list(BUILDERS))
def pair(request, tmp_path_factory):
    hf = BUILDERS[request.param]()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, vlguard_jax.load_pretrained(path)


def test_logits_match_transformers(pair):
    hf, model = pair
    inputs = VisionInputs.of(model.config)
    sizes = SIZES if model.config.model_type == "llava_onevision" else SIZES[:3]
    pictures = images(sizes)
    ids, mask = mixed_batch(inputs, sizes)
    processed = hf_processor(hf)(pictures, return_tensors="pt")
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **processed).logits.numpy()
    batch = inputs.stack([inputs.encode(picture) for picture in pictures])
    np.testing.assert_array_equal(batch["pixel_values"][:, :processed["pixel_values"].shape[1]],
                                  processed["pixel_values"].numpy())
    ours = np.asarray(forward(model, jnp.asarray(ids), images_of(batch), jnp.asarray(mask)))
    valid = mask.astype(bool)
    assert np.abs(ref[valid]).max() > 1.0, "reference logits too small to detect a mismatch"
    np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)
    if model.config.model_type == "llava_onevision":  # the pooled image really pooled
        assert anyres.image_tokens(model.config, SIZES[3]) < anyres.num_crops(model.config, SIZES[3]) * 4


def test_row_images_match_row_major(pair):
    """Training batches give row b image b (`row_images`); the same rows in HF's row-major order agree."""
    hf, model = pair
    inputs = VisionInputs.of(model.config)
    sizes = SIZES[:3]
    ids, mask = mixed_batch(inputs, sizes, seed=1)
    batch = inputs.stack([inputs.encode(picture) for picture in images(sizes, seed=1)])
    tiled = images_of(batch)
    row_major = forward(model, jnp.asarray(ids[:-1]), tiled, jnp.asarray(mask[:-1]))
    per_row = nnx.jit(lambda m, i, t, k: m(i, t, k, row_images=True))(model, jnp.asarray(ids), tiled._replace(
        pixels=jnp.concatenate([tiled.pixels, jnp.zeros_like(tiled.pixels[:1])]),
        index=jnp.concatenate([tiled.index, jnp.zeros_like(tiled.index[:1])]),
        weight=jnp.concatenate([tiled.weight, jnp.zeros_like(tiled.weight[:1])])), jnp.asarray(mask))
    valid = mask[:-1].astype(bool)
    np.testing.assert_allclose(np.asarray(per_row)[:-1][valid], np.asarray(row_major)[valid], atol=1e-5, rtol=0)


def test_wrong_image_token_count_is_refused(pair):
    _, model = pair
    inputs = VisionInputs.of(model.config)
    ids, mask = mixed_batch(inputs, SIZES[:1])
    batch = inputs.stack([inputs.encode(images(SIZES[1:2])[0])])  # another image's plan: another count
    with pytest.raises(ValueError, match="image tokens but 1 images need"):
        model(jnp.asarray(ids[:1]), images_of(batch), jnp.asarray(mask[:1]))
    with pytest.raises(ValueError, match="takes TiledImages"):
        model(jnp.asarray(ids[:1]), jnp.asarray(batch["pixel_values"][:, 0]), jnp.asarray(mask[:1]))


def test_export_loads_in_transformers(pair, tmp_path):
    hf, model = pair
    out = vlguard_jax.save_pretrained(model, tmp_path / "export")
    reloaded, info = HF_CLASSES[model.config.model_type].from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
    assert isinstance(images_of({"pixel_values": 0, "image_index": 1, "image_weight": 2}), TiledImages)
