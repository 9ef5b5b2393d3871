"""Our logits equal transformers' fp32 logits for every supported layout and several model shapes."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import LlavaForConditionalGeneration as HFLlava

import vlguard_jax
from hf_fixtures import LAYOUTS, VARIANTS, build_hf, hf_logits, mixed_batch, save_layout

TOL = 1e-4


@nnx.jit
def forward(model, ids, pixels, mask):
    return model(ids, pixels, mask)


def assert_logits_match(ours, ref, mask):
    valid = mask.astype(bool)  # padded positions are undefined in both implementations
    assert np.abs(ref[valid]).max() > 1.0, "reference logits too small to detect a mismatch"
    np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(tmp_path, variant):
    hf = build_hf(variant)
    ids, mask, pixels = mixed_batch(hf.config)
    ref = hf_logits(hf, ids, mask, pixels)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    assert_logits_match(forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)), ref, mask)
    # A batch without any image skips the tower.
    text_ref = hf_logits(hf, ids[1:2], mask[1:2], None)
    assert_logits_match(forward(model, jnp.asarray(ids[1:2]), None, jnp.asarray(mask[1:2])), text_ref, mask[1:2])


@pytest.mark.parametrize("layout", [l for l in LAYOUTS if l != "hf_save"])
def test_every_layout_loads_to_the_same_logits(tmp_path, layout):
    hf = build_hf("gqa", seed=1)
    ids, mask, pixels = mixed_batch(hf.config, seed=1)
    ref = hf_logits(hf, ids, mask, pixels)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, layout))
    assert_logits_match(forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)), ref, mask)


def test_sharded_checkpoint_loads(tmp_path):
    hf = build_hf("mha", seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids, mask, pixels = mixed_batch(hf.config)
    model = vlguard_jax.load_pretrained(tmp_path)
    assert_logits_match(forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)),
                        hf_logits(hf, ids, mask, pixels), mask)


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 30_000])
def test_save_pretrained_round_trips_through_transformers(tmp_path, max_shard_bytes):
    hf = build_hf("gqa", seed=3)
    ids, mask, pixels = mixed_batch(hf.config, seed=3)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    ours = forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))

    out = vlguard_jax.save_pretrained(model, tmp_path / "export", max_shard_bytes=max_shard_bytes)
    reloaded, info = HFLlava.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert_logits_match(ours, hf_logits(reloaded.eval(), ids, mask, pixels), mask)
    assert (out / "model.safetensors.index.json").exists() == (max_shard_bytes < 2**20)
    # our own export loads back to the same logits too
    again = vlguard_jax.load_pretrained(out)
    np.testing.assert_array_equal(np.asarray(forward(again, jnp.asarray(ids), jnp.asarray(pixels),
                                                     jnp.asarray(mask))), np.asarray(ours))


def test_bf16_load_casts_and_stays_close(tmp_path):
    hf = build_hf("mha", seed=4)
    ids, mask, pixels = mixed_batch(hf.config)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"), dtype=jnp.bfloat16)
    kernel = model.language_model.model.layers.self_attn.q_proj.kernel
    assert kernel.dtype == jnp.bfloat16
    ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)), np.float32)
    ref = hf_logits(hf, ids, mask, pixels)
    valid = mask.astype(bool)
    rel = np.abs(ours[valid] - ref[valid]).max() / np.abs(ref[valid]).max()
    assert rel < 0.05, rel


def test_image_token_count_mismatch_is_explained(tmp_path):
    hf = build_hf("mha")
    ids, mask, pixels = mixed_batch(hf.config)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    with pytest.raises(ValueError, match=r"hold 8 image tokens but 3 images need 12 \(4 each\): expand each <image>"):
        model(jnp.asarray(ids), jnp.asarray(np.concatenate([pixels, pixels[:1]])), jnp.asarray(mask))
