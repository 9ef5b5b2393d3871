"""Prefill + one-token decode steps through the KV cache reproduce transformers' full-sequence logits."""

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import vlguard_jax
from hf_fixtures import build_hf, mixed_batch, save_layout
from vlguard_jax.models import KVCache


@nnx.jit(static_argnames=())
def step(model, ids, pixels, mask, positions, cache, index):
    return model(ids, pixels, mask, positions=positions, cache=cache, cache_index=index)


def test_cached_decoding_matches_full_forward(tmp_path):
    hf = build_hf("gqa", seed=7)
    ids, mask, pixels = mixed_batch(hf.config, seed=7)
    rows = [0, 2]  # the two image samples; row 2 is left padded
    ids, mask = ids[rows], mask[rows]
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)  # what generation uses for left padding
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels),
                 position_ids=torch.tensor(positions)).logits.numpy()

    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    length = ids.shape[1]
    prefill = length - 4
    cache = KVCache.zeros(model.config.text, batch=2, max_len=length + 3)  # spare slots stay masked
    cache_mask = np.zeros((2, length + 3), bool)
    cache_mask[:, :prefill] = mask[:, :prefill]
    logits, cache = step(model, jnp.asarray(ids[:, :prefill]), jnp.asarray(pixels), jnp.asarray(cache_mask),
                         jnp.asarray(positions[:, :prefill]), cache, 0)
    outputs = [np.asarray(logits)]
    for t in range(prefill, length):
        cache_mask[:, t] = True
        logits, cache = step(model, jnp.asarray(ids[:, t:t + 1]), None, jnp.asarray(cache_mask),
                             jnp.asarray(positions[:, t:t + 1]), cache, jnp.int32(t))
        outputs.append(np.asarray(logits))
    ours = np.concatenate(outputs, axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)
