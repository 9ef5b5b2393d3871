"""Text-only language models through the LLaVA code path (no tower, no projector): a plain `LlamaForCausalLM`
loads with transformers' logits, its LoRA step equals PEFT's, it generates like transformers, and its merged and
PEFT exports load back into transformers / PEFT with the same logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import LlamaForCausalLM

import vlguard_jax
from hf_fixtures import save_llama
from peft_fixtures import MODULES, assert_adapters_equal, share_adapters
from test_train_step import LR, our_step, torch_step
from vlguard_jax.checkpoints.peft import export_merged, export_peft
from vlguard_jax.generate import Generator, SamplingConfig
from vlguard_jax.models.lora import LoraConfig, apply_lora

TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def batch(seed=0, rows=3, length=40):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, 128, size=(rows, length)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, -9:] = False  # right padding
    labels = np.where(mask, ids, -100)
    labels[:, :5] = -100
    return ids, mask, labels


def our_logits(model, ids, mask):
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


def hf_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()


@pytest.mark.parametrize("tied", [True, False])
def test_a_plain_llama_loads_text_only_with_transformers_logits(tmp_path, tied):
    hf = save_llama(tmp_path, tied)
    model = vlguard_jax.load_pretrained(tmp_path)
    assert model.config.vision is None and model.vision_tower is None and model.multi_modal_projector is None
    assert model.config.num_image_tokens == 0
    ids, mask, _ = batch()
    ref = hf_logits(hf, ids, mask)
    assert np.abs(ref[mask]).max() > 1.0, "reference logits too small to detect a mismatch"
    np.testing.assert_allclose(our_logits(model, ids, mask)[mask], ref[mask], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="a text-only model takes no images"):
        model.image_features(jnp.zeros((1, 3, 8, 8)))


def test_lora_step_matches_peft(tmp_path):
    hf = save_llama(tmp_path, tied=False, seed=3)
    model = vlguard_jax.load_pretrained(tmp_path)
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
    peft_model = get_peft_model(hf, PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    theirs_layers = peft_model.base_model.model.model.layers
    torch.manual_seed(0)
    share_adapters(model.language_model.model.layers, theirs_layers)
    ids, mask, labels = batch(seed=1)
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    torch_loss = torch_step(peft_model, {LR: lora}, dict(input_ids=torch.tensor(ids), labels=torch.tensor(labels).long(),
                                                         attention_mask=torch.tensor(mask.astype(np.int64))))
    ours_batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "labels": jnp.asarray(labels)}
    graphdef, trainable, frozen, before, after, metrics = our_step(model, "lora", ours_batch)
    assert abs(float(metrics["loss"]) - torch_loss) < 1e-5
    nnx.replace_by_pure_dict(trainable, after.params)
    assert_adapters_equal(nnx.merge(graphdef, trainable, frozen).language_model.model.layers, theirs_layers)
    layers = lambda params: params["language_model"]["model"]["layers"]
    moved = max(float(jnp.abs(layers(after.params)[block][name]["lora_a"] - layers(before.params)[block][name]
                              ["lora_a"]).max()) for block, names in MODULES.items() for name in names)
    assert moved > 1e-4  # the comparison is not vacuous


def test_generation_equals_transformers(tmp_path):
    hf = save_llama(tmp_path, tied=True, seed=1)
    generator = Generator(vlguard_jax.load_pretrained(tmp_path), pad_id=0, stop_ids=[2], batch_size=4)
    rng = np.random.RandomState(1)
    prompts = [rng.randint(3, 128, 30), rng.randint(3, 128, 7)]
    for prompt, tokens in zip(prompts, generator.generate(prompts, [None, None], SamplingConfig(max_new_tokens=8))):
        with torch.no_grad():
            ref = hf.generate(torch.tensor(prompt[None]), max_new_tokens=8, do_sample=False, eos_token_id=2,
                              pad_token_id=0)[0, len(prompt):].numpy()
        np.testing.assert_array_equal(tokens, ref[:len(tokens)])


@pytest.mark.parametrize("tied", [True, False])
def test_merged_and_peft_exports_load_back_into_transformers(tmp_path, tied):
    save_llama(tmp_path / "base", tied, seed=5)
    model = vlguard_jax.load_pretrained(tmp_path / "base")
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
    for _, module in nnx.iter_graph(model):  # non-zero B: the adapters change the logits
        if getattr(module, "lora_b", None) is not None:
            module.lora_b[...] = jax.random.normal(jax.random.key(1), module.lora_b.shape) * 0.1
    ids, mask, _ = batch(seed=2)
    ours = our_logits(model, ids, mask)
    merged = LlamaForCausalLM.from_pretrained(export_merged(model, tmp_path / "merged")).eval()
    assert merged.config.architectures == ["LlamaForCausalLM"] and merged.config.tie_word_embeddings == tied
    np.testing.assert_allclose(hf_logits(merged, ids, mask)[mask], ours[mask], atol=1e-4, rtol=0)
    export_peft(model, tmp_path / "peft", alpha=8.0, dropout=0.0, rslora=False, base_model=str(tmp_path / "base"),
                projector=True)
    adapted = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "peft").eval()
    np.testing.assert_allclose(hf_logits(adapted, ids, mask)[mask], ours[mask], atol=1e-4, rtol=0)
    base = vlguard_jax.load_pretrained(tmp_path / "base")
    assert np.abs(our_logits(base, ids, mask) - ours)[mask].max() > 1e-2  # the adapters mattered
