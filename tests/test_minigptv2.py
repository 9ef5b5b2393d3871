"""MiniGPT-v2 read from its released parts equals an independent torch reference (`minigpt_fixtures`: MiniGPT-v2's
EVA ViT, `ln_vision`, concatenate-and-project and LLaMA + PEFT LoRA re-implemented from upstream) in fp32."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from minigpt_fixtures import (EVA_TINY, IMG, PRETRAIN_IMG, USED_DEPTH, MiniGPTv2Reference,  # noqa: E402
                              eva_reference_features, random_eva_state_dict, write_minigptv2_parts)
from vlguard_jax.checkpoints.hf import load_pretrained  # noqa: E402
from vlguard_jax.checkpoints.minigpt import bicubic_resize  # noqa: E402
from vlguard_jax.checkpoints.tensors import CheckpointError  # noqa: E402

TINY_EVA = {"model_type": "eva_vit", "hidden_size": EVA_TINY["embed_dim"], "num_attention_heads": EVA_TINY["num_heads"],
            "intermediate_size": int(EVA_TINY["embed_dim"] * EVA_TINY["mlp_ratio"]), "num_hidden_layers": USED_DEPTH,
            "image_size": IMG, "patch_size": EVA_TINY["patch_size"]}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The three released parts; the EVA directory carries the tiny tower's config.json beside its weights."""
    root = tmp_path_factory.mktemp("minigptv2")
    written = write_minigptv2_parts(root)
    (root / "config.json").write_text(json.dumps(TINY_EVA))
    return {**written, "tower": root}


@pytest.fixture(scope="module")
def model(parts):
    return load_pretrained(parts["llama"], vision_tower=parts["tower"], projector=parts["ckpt"])


@pytest.mark.parametrize("size_in,size_out", [(4, 8), (16, 32), (5, 7), (7, 5)])
def test_bicubic_resize_is_torch_interpolate(size_in, size_out):
    grid = np.random.default_rng(size_in).normal(size=(size_in, size_in, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(size_out,) * 2,
                                               mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(bicubic_resize(grid, size_out), expected, atol=1e-5)


def test_config_is_the_eva_tower_with_the_concatenating_projector(model, parts):
    config = model.config
    assert (config.vision.tower, config.layout, config.projector_type) == ("eva", "minigpt_v2", "concat4")
    assert config.num_image_tokens == (IMG // EVA_TINY["patch_size"]) ** 2 // 4
    assert (config.image_token_id, config.text.vocab_size, config.text.pad_token_id) == (32000, 32000, 0)
    assert model.vision_tower.encoder.layers.self_attn.k_proj.bias is None  # q and v biases only


def test_eva_tower_equals_upstream_after_the_position_interpolation(model, parts):
    """The checkpoint's 16-px positions (4 × 4) resized to the 32-px grid (8 × 8), 2 of its 3 blocks run."""
    state_dict = torch.load(parts["eva"], weights_only=True)
    assert state_dict["pos_embed"].shape[1] == (PRETRAIN_IMG // EVA_TINY["patch_size"]) ** 2 + 1
    pixels = np.random.default_rng(1).normal(size=(2, 3, IMG, IMG)).astype(np.float32)
    expected = eva_reference_features(state_dict, pixels)
    tower = model.vision_tower
    ours = np.asarray(tower.encoder(tower.embeddings(jnp.asarray(pixels)), USED_DEPTH))
    assert np.abs(expected).max() > 1  # features of a size where 1e-4 means something
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_logits_equal_minigptv2s(model, parts):
    """Text, the image's 16 projected tokens, text: the prompt shape of `get_context_emb`, two rows at once."""
    reference = MiniGPTv2Reference(parts)
    rng = np.random.default_rng(2)
    pixels = rng.normal(size=(2, 3, IMG, IMG)).astype(np.float32)
    segments = [[rng.integers(3, 32000, 5).tolist(), rng.integers(3, 32000, 7).tolist()],
                [rng.integers(3, 32000, 3).tolist(), rng.integers(3, 32000, 9).tolist()]]
    expected = reference.logits(pixels, segments)
    tokens = model.config.num_image_tokens
    ids = np.array([before + [model.config.image_token_id] * tokens + after for before, after in segments])
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels)))
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_convert_writes_the_minigpt_v2_layout_that_loads_back(model, parts, tmp_path):
    from vlguard_jax.cli import main

    assert main(["convert", str(parts["llama"]), str(tmp_path / "out"), "--vision-tower", str(parts["tower"]),
                 "--projector", str(parts["ckpt"])]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "minigpt_v2"
    again = load_pretrained(tmp_path / "out")
    assert again.config == model.config
    ids = jnp.asarray([[1] + [32000] * model.config.num_image_tokens + [7, 8]])
    pixels = jnp.asarray(np.random.default_rng(3).normal(size=(1, 3, IMG, IMG)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(again(ids, pixels)), np.asarray(model(ids, pixels)))


def test_parts_that_do_not_fit_are_named(parts, tmp_path):
    extra = tmp_path / "extra.pth"
    checkpoint = torch.load(parts["ckpt"], weights_only=True)
    checkpoint["model"]["llama_model.base_model.model.lm_head.weight"] = torch.zeros(2, 2)
    torch.save(checkpoint, extra)
    with pytest.raises(CheckpointError, match=r"extra\.pth: 1 tensors .*lm_head\.weight"):
        load_pretrained(parts["llama"], vision_tower=parts["tower"], projector=extra)
    short = tmp_path / "short"
    short.mkdir()
    state_dict = {k: v for k, v in random_eva_state_dict().items() if not k.startswith(("blocks.1.", "blocks.2."))}
    torch.save(state_dict, short / "eva_vit_g.pth")
    (short / "config.json").write_text(json.dumps(TINY_EVA))
    with pytest.raises(CheckpointError, match=r"eva_vit_g\.pth: 1 blocks, fewer than the 2"):
        load_pretrained(parts["llama"], vision_tower=short, projector=parts["ckpt"])
    with pytest.raises(CheckpointError, match="projector=FILE"):
        load_pretrained(parts["llama"], vision_tower=parts["tower"])
