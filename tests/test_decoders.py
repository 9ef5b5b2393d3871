"""Qwen2 (q/k/v biases, GQA, tied embeddings) and Mistral (a sliding window shorter than the input) run as our
LLaMA-family decoder: their configs read and write back through transformers, and the logits of a full forward
and of a KV-cache decode (the model's own, and the generation engines' step) equal transformers' fp32 logits."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_fixtures import scale_weights
import vlguard_jax
from vlguard_jax.checkpoints.hf import _resolve_single, build_model, read_config
from vlguard_jax.generate.step import decode_step, layer_weights
from vlguard_jax.models import KVCache, LlamaForCausalLM, TextConfig
from vlguard_jax.parallel import LOGICAL_RULES

TOL = 1e-4
LENGTH = 12
WINDOW = 4  # Mistral's: a third of the input, so it cuts
SHAPE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=2, rms_norm_eps=1e-6,
                                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2_tied": (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=1, tie_word_embeddings=True,
                                                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "mistral": (MistralConfig, MistralForCausalLM, dict(num_key_value_heads=2, head_dim=8, sliding_window=WINDOW,
                                                        rms_norm_eps=1e-5)),
}


def build_hf(variant: str, seed: int = 0):
    config_class, model_class, options = VARIANTS[variant]
    torch.manual_seed(seed)
    return scale_weights(model_class(config_class(**SHAPE, **options)).eval())


def load(hf, directory, **changes) -> LlamaForCausalLM:
    """`hf` saved, then read by the checkpoint loader as `load_language_model` reads a LLaMA (every tensor name
    checked against our parameters); `changes` alter the config it is built with."""
    hf.save_pretrained(directory)
    if not changes:
        return vlguard_jax.load_language_model(directory)
    config_path, config = read_config(directory)
    resolved = _resolve_single(directory, config_path, config, TextConfig.from_hf, lambda key, text: None if (
        text.tie_word_embeddings and key == "lm_head.weight") else key)
    resolved.config = dataclasses.replace(resolved.config, **changes)
    return build_model(resolved, LlamaForCausalLM, dtype=jnp.float32, param_dtype=jnp.float32, mesh=None,
                       rules=LOGICAL_RULES, remat="none")


def hf_logits(hf, ids, mask, positions=None) -> np.ndarray:
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=None if positions is None else torch.tensor(positions)).logits.numpy()


def assert_close(ours, ref, mask):
    valid = mask.astype(bool)  # padded positions are undefined in both
    assert np.abs(ref[valid]).max() > 1.0, "reference logits too small to detect a mismatch"
    np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=TOL, rtol=0)


def batch(rows: int, seed: int, left_pad: int = 0, right_pad: int = 0):
    """Random ids; the last row padded on the left or the right."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, SHAPE["vocab_size"], size=(rows, LENGTH))
    mask = np.ones((rows, LENGTH), np.int64)
    mask[-1, :left_pad] = 0
    mask[-1, LENGTH - right_pad:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_round_trips_through_transformers(variant):
    hf = build_hf(variant)
    cfg = TextConfig.from_hf(hf.config.to_dict())
    family = variant.split("_")[0]
    assert (cfg.family, cfg.qkv_bias, cfg.attention_bias) == (family, family == "qwen2", False)
    assert cfg.sliding_window == (WINDOW if family == "mistral" else None)
    assert cfg.tie_word_embeddings == variant.endswith("tied")
    assert TextConfig.from_hf(cfg.to_hf()) == cfg
    config_class, model_class, _ = VARIANTS[variant]
    written = config_class(**cfg.to_hf())  # transformers reads our config.json to the same model
    assert TextConfig.from_hf(written.to_dict()) == cfg
    assert model_class(written).state_dict().keys() == hf.state_dict().keys()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(tmp_path, variant):
    hf = build_hf(variant, seed=1)
    ids, mask = batch(3, seed=1, right_pad=5)
    ref = hf_logits(hf, ids, mask)
    model = load(hf, tmp_path)
    bias = model.model.layers.self_attn
    assert (bias.q_proj.bias is not None, bias.o_proj.bias is not None) == (variant.startswith("qwen2"), False)
    positions = jnp.broadcast_to(jnp.arange(LENGTH), ids.shape)
    forward = nnx.jit(lambda m, ids, mask: m(ids, mask, positions, padding="right"))
    assert_close(forward(model, jnp.asarray(ids), jnp.asarray(mask)), ref, mask)
    if variant == "mistral":  # the window changes the logits: without it they differ
        wide = load(hf, tmp_path / "wide", sliding_window=None)
        assert np.abs(np.asarray(forward(wide, jnp.asarray(ids), jnp.asarray(mask))) - ref)[mask == 1].max() > 0.1


@nnx.jit
def prefill(model, ids, cache_mask, positions, cache):
    return model(ids, cache_mask, positions, cache, 0)  # slot 0: the kernel path, where the window lets it


@nnx.jit
def model_step(model, token, cache_mask, position, cache, index):
    logits, cache = model(token[:, None], cache_mask, position[:, None], cache, index)
    return logits[:, 0], cache


@nnx.jit
def engine_step(model, token, cache_mask, position, cache, index):
    """What both generation engines run (on a CPU: the layers one by one, with a mask of its own)."""
    return decode_step(model, layer_weights(model), token, cache_mask, position, cache, index)


@pytest.mark.parametrize("variant,prompt,gap,step", [
    ("mistral", 3, 0, model_step),  # a prefill inside the window, then decoding past it
    ("mistral", 8, 2, model_step),  # a prefill past the window; empty slots before the decoded tokens
    ("mistral", 3, 2, engine_step),
    ("mistral", 8, 0, engine_step),
    ("qwen2_tied", 8, 0, model_step),
])
def test_cached_decoding_matches_transformers(tmp_path, variant, prompt, gap, step):
    """Prompts left-padded and positions counted over the mask, as generation runs them. `gap` empty slots after
    the prompt, as the engine leaves between a prefix and its suffix, take no room in the window."""
    hf = build_hf(variant, seed=2)
    ids, mask = batch(2, seed=2, left_pad=3)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    ref = hf_logits(hf, ids, mask, positions)
    model = load(hf, tmp_path)

    slots = LENGTH + gap + 3  # spare slots stay masked
    cache = KVCache.zeros(model.config, batch=2, max_len=slots)
    cache_mask = np.zeros((2, slots), bool)
    cache_mask[:, :prompt] = mask[:, :prompt]
    logits, cache = prefill(model, jnp.asarray(ids[:, :prompt]), jnp.asarray(cache_mask),
                            jnp.asarray(positions[:, :prompt]), cache)
    outputs = [np.asarray(logits)]
    for t in range(prompt, LENGTH):
        cache_mask[:, t + gap] = True
        logits, cache = step(model, jnp.asarray(ids[:, t]), jnp.asarray(cache_mask), jnp.asarray(positions[:, t]),
                             cache, jnp.int32(t + gap))
        outputs.append(np.asarray(logits)[:, None])
    assert_close(np.concatenate(outputs, axis=1), ref, mask)
