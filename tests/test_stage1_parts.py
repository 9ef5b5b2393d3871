"""LLaVA's stage-1 parts (Vicuna + mm_projector.bin + CLIP) load as the model LLaVA-1.5's stage 2 trains: Vicuna's
vocabulary kept, `<image>` just past it, the logits of transformers' LLaVA built from the same parts."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from flax.traverse_util import flatten_dict
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM, LlavaConfig
from transformers import LlavaForConditionalGeneration as HFLlava

import vlguard_jax
from hf_fixtures import BASE_VOCAB, hf_logits, mixed_batch, scale_weights, tiny_tokenizer
from test_hf_parity import assert_logits_match, forward
from vlguard_jax import CheckpointError
from vlguard_jax.config import ConfigError, config_from_dict
from vlguard_jax.parallel import make_mesh
from vlguard_jax.train.setup import build, load_tokenizer

VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=28,
              patch_size=14)  # 48 wide, the LLM 32: a projector swapped end for end cannot pass


def projector_tensors(d_in: int = 48, d_out: int = 32) -> dict:
    shapes = {"0.weight": (d_out, d_in), "0.bias": (d_out,), "2.weight": (d_out, d_out), "2.bias": (d_out,)}
    return {f"model.mm_projector.{k}": 0.2 * torch.randn(shape) for k, shape in shapes.items()}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A Vicuna-layout LLM (safetensors + tokenizer), a full CLIP directory and a torch-saved stage-1 projector."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    llm = scale_weights(LlamaForCausalLM(LlamaConfig(
        vocab_size=BASE_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, rms_norm_eps=1e-5, max_position_embeddings=256, pad_token_id=0)).eval())
    clip = scale_weights(CLIPModel(CLIPConfig(
        vision_config=VISION, projection_dim=8, text_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
            bos_token_id=0, eos_token_id=1, pad_token_id=1))).eval())
    projector = projector_tensors()
    llm.save_pretrained(root / "vicuna")
    tiny_tokenizer(root / "vicuna")
    clip.save_pretrained(root / "clip")
    torch.save(projector, root / "mm_projector.bin")
    save_file(projector, str(root / "mm_projector.safetensors"))
    return dict(root=root, vicuna=root / "vicuna", clip=root / "clip", llm=llm, clip_model=clip, projector=projector)


def llava_from_parts(llm, clip, projector) -> HFLlava:
    """transformers' LLaVA assembled from the three parts. v5 looks every input id up in the embedding (it has no
    case for an image id past the vocabulary), so it gets one row more for `<image>`, which the image features
    overwrite: its first BASE_VOCAB logits are the Vicuna vocabulary's."""
    text = LlamaConfig(**{**llm.config.to_dict(), "vocab_size": BASE_VOCAB + 1})
    config = LlavaConfig(vision_config=clip.config.vision_config, text_config=text, image_token_index=BASE_VOCAB,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = HFLlava(config).eval()
    grow = lambda w, into: torch.cat([w, into[BASE_VOCAB:]])
    with torch.no_grad():
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
        model.model.multi_modal_projector.load_state_dict(
            {f"linear_{int(k.split('.')[2]) // 2 + 1}.{k.split('.')[3]}": v for k, v in projector.items()})
        state = llm.model.state_dict()
        embed = model.model.language_model.embed_tokens.weight
        state["embed_tokens.weight"] = grow(state["embed_tokens.weight"], embed)
        model.model.language_model.load_state_dict(state)
        model.lm_head.weight.copy_(grow(llm.lm_head.weight, model.lm_head.weight))
    return model


@pytest.mark.parametrize("projector_file", ["mm_projector.bin", "mm_projector.safetensors"])
def test_parts_give_the_logits_of_transformers_llava(parts, projector_file):
    reference = llava_from_parts(parts["llm"], parts["clip_model"], parts["projector"])
    ids, mask, pixels = mixed_batch(reference.config)
    model = vlguard_jax.load_pretrained(parts["vicuna"], vision_tower=parts["clip"],
                                        projector=parts["root"] / projector_file)
    c = model.config
    assert (c.text.vocab_size, c.image_token_id, c.text.pad_token_id) == (BASE_VOCAB, BASE_VOCAB, 0)
    assert (c.projector_type, c.vision_feature_layer, c.vision_feature_select_strategy) == ("mlp2x_gelu", -2, "default")
    ours = forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    assert ours.shape[-1] == BASE_VOCAB  # the loss is a softmax over Vicuna's vocabulary alone
    assert_logits_match(ours, hf_logits(reference, ids, mask, pixels)[..., :BASE_VOCAB], mask)


def test_export_of_a_parts_model_runs_in_transformers(parts, tmp_path):
    """llava-hf cannot hold `<image>` past the vocabulary: the export grows the rows to a multiple of 64."""
    model = vlguard_jax.load_pretrained(parts["vicuna"], vision_tower=parts["clip"],
                                        projector=parts["root"] / "mm_projector.bin")
    vlguard_jax.save_pretrained(model, tmp_path)
    exported = HFLlava.from_pretrained(tmp_path).eval()
    assert exported.config.text_config.vocab_size == 128 and exported.config.image_token_id == BASE_VOCAB
    embed = exported.model.language_model.embed_tokens.weight.detach().numpy()
    np.testing.assert_allclose(embed[BASE_VOCAB:], np.broadcast_to(embed[:BASE_VOCAB].mean(0), (28, 32)), atol=1e-6)
    ids, mask, pixels = mixed_batch(exported.config)
    ours = forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    assert_logits_match(ours, hf_logits(exported, ids, mask, pixels)[..., :BASE_VOCAB], mask)


@pytest.mark.parametrize("tensors, message", [
    (projector_tensors(d_in=40), r"mm_projector.bin: the projector takes 40-wide image features but the CLIP tower "
                                 r"of .*clip/config.json gives 48; pass the projector pretrained on this vision tower"),
    (projector_tensors(d_out=40), r"mm_projector.bin: the projector gives 40-wide features but the LLM of "
                                  r".*vicuna/config.json has hidden size 32; pass the projector pretrained with this "
                                  r"LLM"),
    ({k: v for k, v in projector_tensors().items() if k != "model.mm_projector.2.bias"},
     r"mm_projector.bin: not a stage-1 mlp2x_gelu projector \(1 missing: model.mm_projector.2.bias; 0 unexpected: "
     r"-\); pass the mm_projector.bin of a llava-v1.5-mlp2x-336px-pretrain-\* checkpoint"),
    ({**projector_tensors(), "model.mm_projector.4.weight": torch.zeros(2)},
     r"\(0 missing: -; 1 unexpected: model.mm_projector.4.weight\)"),
], ids=["in_dim", "out_dim", "missing_key", "unexpected_key"])
def test_projector_that_does_not_fit_is_named(parts, tmp_path, tensors, message):
    torch.save(tensors, tmp_path / "mm_projector.bin")
    with pytest.raises(CheckpointError, match=message):
        vlguard_jax.load_pretrained(parts["vicuna"], vision_tower=parts["clip"],
                                    projector=tmp_path / "mm_projector.bin")


def test_missing_parts_say_what_to_pass(parts, tmp_path):
    with pytest.raises(CheckpointError, match=r"vicuna/config.json: a plain llama checkpoint has no projector; pass "
                                              r"LLaVA's stage-1 mm_projector.bin as projector=FILE \(config: "
                                              r"model.projector\)"):
        vlguard_jax.load_pretrained(parts["vicuna"], vision_tower=parts["clip"])
    with pytest.raises(CheckpointError, match=r"holds no vision weights; pass the CLIP checkpoint directory \(a local "
                                              r"copy of openai/clip-vit-large-patch14-336\) as vision_tower=DIR"):
        vlguard_jax.load_pretrained(parts["vicuna"], projector=parts["root"] / "mm_projector.bin")
    with pytest.raises(CheckpointError, match=r"nowhere.bin: projector file not found"):
        vlguard_jax.load_pretrained(parts["vicuna"], vision_tower=parts["clip"], projector=tmp_path / "nowhere.bin")
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(CheckpointError, match=r"model_type 'llava' \(llava-hf layout\) takes no separate projector, "
                                              r"but projector=.*was given; leave model.projector unset"):
        vlguard_jax.load_pretrained(tmp_path, projector=parts["root"] / "mm_projector.bin")


def test_projector_bin_without_torch_says_how_to_fix(parts, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(CheckpointError, match=r"mm_projector.bin: reading a PyTorch pickle needs torch.*"
                                              r"pip install torch.*convert the file to safetensors"):
        vlguard_jax.load_pretrained(parts["vicuna"], vision_tower=parts["clip"],
                                    projector=parts["root"] / "mm_projector.bin")


def _config(parts, mode: str):
    return config_from_dict({"model": {"path": str(parts["vicuna"]), "vision_tower": str(parts["clip"]),
                                       "projector": str(parts["root"] / "mm_projector.bin")},
                             "train": {"mode": mode, "lora": {"rank": 4}}}, "test")


def test_tokenizer_gets_image_and_pad_alike_on_every_start(parts):
    config = _config(parts, "full")
    first, again = load_tokenizer(config, parts["vicuna"]), load_tokenizer(config, parts["vicuna"])
    for tokenizer in (first, again):
        assert (tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token, tokenizer.pad_token_id) == \
            (BASE_VOCAB, "<unk>", 0)
        assert len(tokenizer) == BASE_VOCAB + 1
    assert first.get_vocab() == again.get_vocab()
    first.add_tokens(["<extra>"])  # a token past the vocabulary that is not the image token would be looked up
    with pytest.raises(ConfigError, match=f"the tokenizer has {BASE_VOCAB + 2} tokens but the model's vocabulary "
                                          f"has {BASE_VOCAB}"):
        build(config, make_mesh(devices=jax.devices()[:1]), values="abstract", tokenizer=first)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_setup_from_parts_trains_the_recipe_set(parts, mode):
    config = _config(parts, mode)
    setup = build(config, make_mesh(fsdp=2, devices=jax.devices()[:2]),
                  tokenizer=load_tokenizer(config, parts["vicuna"]))
    trainable = set(flatten_dict(setup.params, sep="/"))
    frozen = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(setup.frozen)}
    assert not any("vision_tower" in p for p in trainable) and any("vision_tower" in p for p in frozen)
    projector = {p for p in trainable if "multi_modal_projector" in p}
    assert len(projector) == 4  # trained in both recipes
    if mode == "full":
        assert not {p for p in frozen if "vision_tower" not in p}
        assert any("embed_tokens" in p for p in trainable) and any("lm_head" in p for p in trainable)
    else:
        assert trainable - projector and all(p.endswith(("lora_a", "lora_b")) for p in trainable - projector)
        assert any("embed_tokens" in p for p in frozen)
    kernel = setup.params["multi_modal_projector"]["linear_1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), parts["projector"]["model.mm_projector.0.weight"].numpy().T)
