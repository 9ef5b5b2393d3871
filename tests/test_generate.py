"""Greedy generation equals transformers' `generate(do_sample=False)`; one compile serves a prompt bucket."""

import numpy as np
import pytest
import torch

import vlguard_jax
from hf_fixtures import IMAGE_TOKEN, build_hf, save_layout
from vlguard_jax.generate import Generator, SamplingConfig

NEW_TOKENS = 12


def prompts_for(config, seed):
    rng = np.random.RandomState(seed)
    v = config.vision_config
    per_image = (v.image_size // v.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")
    with_image = lambda n: np.concatenate([[1], [IMAGE_TOKEN] * per_image, rng.randint(3, IMAGE_TOKEN, n)])
    prompts = [with_image(5), rng.randint(3, IMAGE_TOKEN, 9), with_image(2)]
    prompts[1][0] = 1
    images = [rng.randn(3, v.image_size, v.image_size).astype(np.float32), None,
              rng.randn(3, v.image_size, v.image_size).astype(np.float32)]
    return prompts, images


def hf_generate(hf, prompts, images, pad_id, eos=2, **options):
    length = max(len(p) for p in prompts)
    ids = np.full((len(prompts), length), pad_id)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = 1
    pixels = torch.tensor(np.stack([im for im in images if im is not None]))
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=pixels,
                          max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad_id, eos_token_id=eos, **options)
    return [row[length:].numpy() for row in out]


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_greedy_tokens_equal_transformers(tmp_path, variant):
    hf = build_hf(variant, seed=31)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    prompts, images = prompts_for(hf.config, 31)
    generator = Generator(model, pad_id=0, stop_ids=[2], batch_size=4, buckets=(32, 64))
    ours = generator.generate(prompts, images, SamplingConfig(max_new_tokens=NEW_TOKENS))
    theirs = hf_generate(hf, prompts, images, pad_id=0)
    for row, (a, b) in enumerate(zip(ours, theirs)):
        stop = np.flatnonzero(b == 2)
        b = b[: stop[0] + 1] if len(stop) else b
        np.testing.assert_array_equal(a, b, err_msg=f"row {row}")
    # other prompt lengths in the same bucket reuse the executable
    generator.generate([prompts[1][:5]], [None], SamplingConfig(max_new_tokens=NEW_TOKENS))
    generator.generate(prompts[:2], images[:2], SamplingConfig(max_new_tokens=NEW_TOKENS))
    assert generator.compilations == 1


def test_sampling_is_seeded_and_stops_at_stop_tokens(tmp_path):
    hf = build_hf("mha", seed=32)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    prompts, images = prompts_for(hf.config, 32)
    generator = Generator(model, pad_id=0, stop_ids=[2], batch_size=4, buckets=(32,))
    sampled = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=5)
    first = generator.generate(prompts, images, sampled)
    again = generator.generate(prompts, images, sampled)
    other = generator.generate(prompts, images, SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    greedy = generator.generate(prompts, images, SamplingConfig(max_new_tokens=10))
    stop_at = int(greedy[0][3])  # make the 4th greedy token a stop token: row 0 must end right there
    stopping = Generator(model, pad_id=0, stop_ids=[stop_at], batch_size=4, buckets=(32,))
    first_row = stopping.generate(prompts[:1], images[:1], SamplingConfig(max_new_tokens=10))[0]
    stop = np.flatnonzero(greedy[0] == stop_at)[0]
    np.testing.assert_array_equal(first_row, greedy[0][: stop + 1])


def test_min_new_tokens_bans_an_early_stop_like_transformers(tmp_path):
    """VLGuard generates with `min_new_tokens=1`: a stop token cannot be the first token of an answer."""
    hf = build_hf("mha", seed=34)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    prompts, images = prompts_for(hf.config, 34)
    plain = SamplingConfig(max_new_tokens=NEW_TOKENS)
    first = Generator(model, pad_id=0, stop_ids=[2], batch_size=4, buckets=(32,)).generate(prompts, images, plain)
    stop = int(first[0][0])
    generator = Generator(model, pad_id=0, stop_ids=[stop], batch_size=4, buckets=(32,))
    assert len(generator.generate(prompts[:1], images[:1], plain)[0]) == 1  # row 0 stops at once without it
    ours = generator.generate(prompts, images, SamplingConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=1))
    theirs = hf_generate(hf, prompts, images, pad_id=0, eos=stop, min_new_tokens=1)
    assert len(ours[0]) > 1
    for row, (a, b) in enumerate(zip(ours, theirs)):
        ends = np.flatnonzero(b == stop)
        np.testing.assert_array_equal(a, b[: ends[0] + 1] if len(ends) else b, err_msg=f"row {row}")


def test_greedy_tokens_on_a_mesh_equal_one_device(tmp_path):
    """Weights fsdp × tensor sharded, batch over data × fsdp, cache over batch and kv heads: the same tokens."""
    import jax

    from vlguard_jax.parallel import make_mesh

    hf = build_hf("gqa", seed=33)
    path = save_layout(hf, tmp_path, "hf_save")
    prompts, images = prompts_for(hf.config, 33)
    prompts, images = prompts * 2, images * 2  # 6 prompts in a batch of 8
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS)
    single = Generator(vlguard_jax.load_pretrained(path), pad_id=0, stop_ids=[2], batch_size=8, buckets=(32,))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded_model = vlguard_jax.load_pretrained(path, mesh=mesh)
    sharded = Generator(sharded_model, pad_id=0, stop_ids=[2], batch_size=8, buckets=(32,), mesh=mesh)
    kernel = sharded_model.language_model.model.layers.self_attn.k_proj.kernel[...]
    assert {s.data.shape for s in kernel.addressable_shards} == {(2, 16, 4)}  # [layers, 32/fsdp, 2·4/tensor]
    ours, theirs = sharded.generate(prompts, images, sampling), single.generate(prompts, images, sampling)
    assert len(ours) == 6 and sum(len(t) for t in ours) > 6
    for row, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(a, b, err_msg=f"row {row}")
    with pytest.raises(ValueError, match=r"batch size 6 does not divide over the mesh's data × fsdp = 4 devices"):
        Generator(sharded_model, pad_id=0, stop_ids=[2], batch_size=6, mesh=mesh)
    assert jax.device_count() == 8
