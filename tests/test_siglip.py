"""Our SigLIP tower, loaded through the checkpoint name table, gives transformers' fp32 `SiglipVisionModel` hidden
states: the state LLaVA-OneVision reads (before `post_layernorm`)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import SiglipVisionConfig as HFSiglipVisionConfig, SiglipVisionModel

from hf_fixtures import scale_weights
from vlguard_jax.checkpoints import names
from vlguard_jax.models.config import VISION_CONFIGS, SiglipVisionConfig
from vlguard_jax.models.siglip import SiglipVisionTower

TOL = 1e-4


def build_hf(seed: int = 0, **overrides) -> SiglipVisionModel:
    torch.manual_seed(seed)
    config = HFSiglipVisionConfig(**{**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=4, image_size=28, patch_size=14,
                                            vision_use_head=False), **overrides})
    return scale_weights(SiglipVisionModel(config).eval())


def load(hf: SiglipVisionModel) -> SiglipVisionTower:
    """Our tower with `hf`'s weights, each placed by `names.param_path` from the name it has inside a llava-hf
    checkpoint's `vision_tower.` (transformers v5's `SiglipVisionModel` drops the `vision_model.` level)."""
    cfg = VISION_CONFIGS[hf.config.model_type].from_hf(hf.config.to_dict())
    model = SiglipVisionTower(cfg, rngs=nnx.Rngs(0))
    state = {"vision_model." + name: tensor.numpy() for name, tensor in hf.state_dict().items()}
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        hf_names = names.hf_names([str(p) for p in path], var.shape[0] if "layers" in path else None)
        arrays = []
        for name in hf_names:
            assert names.param_path(name)[0] == tuple(map(str, path)), name
            arrays.append(names.to_ours(names.param_path(name)[2], state.pop(name)))
        value = np.stack(arrays) if "layers" in path else arrays[0]
        assert value.shape == var.shape, (path, value.shape, var.shape)
        flat.append((path, var.replace(jnp.asarray(value))))
    assert not state, f"checkpoint tensors with no parameter: {sorted(state)}"
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def test_config_reads_transformers_siglip():
    hf = build_hf()
    cfg = SiglipVisionConfig.from_hf(hf.config.to_dict())
    assert (cfg.hidden_act, cfg.layer_norm_eps, cfg.num_patches, cfg.class_token) == ("gelu_pytorch_tanh", 1e-6, 4,
                                                                                      False)
    assert SiglipVisionConfig.from_hf(cfg.to_hf()) == cfg
    assert HFSiglipVisionConfig(**cfg.to_hf()).vision_use_head is False


def test_checkpoint_names_map_to_the_right_kinds():
    kinds = {name: names.param_path("vision_model." + name)[2] for name in build_hf().state_dict()}
    assert kinds["embeddings.patch_embedding.weight"] == "conv"
    assert kinds["embeddings.position_embedding.weight"] == "embedding"
    assert kinds["encoder.layers.2.layer_norm1.weight"] == kinds["post_layernorm.weight"] == "norm"
    assert kinds["encoder.layers.1.self_attn.out_proj.weight"] == kinds["encoder.layers.0.mlp.fc2.weight"] == "linear"
    assert {kind for name, kind in kinds.items() if name.endswith(".bias")} == {"copy"}


@pytest.mark.parametrize("image_size,patch_size,layers", [(28, 14, 3), (32, 8, 2)])
def test_hidden_states_match_transformers(image_size, patch_size, layers):
    hf = build_hf(seed=layers, image_size=image_size, patch_size=patch_size, num_hidden_layers=layers)
    pixels = np.random.RandomState(0).randn(2, 3, image_size, image_size).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(pixels), output_hidden_states=True).hidden_states
    model = load(hf)
    forward = nnx.jit(lambda m, x, n: m(x, n), static_argnums=2)
    for k in (1, layers):
        ours = np.asarray(forward(model, jnp.asarray(pixels), k))
        assert ours.shape == (2, (image_size // patch_size) ** 2, 32)
        assert np.abs(ref[k].numpy()).max() > 1.0, "reference too small to detect a mismatch"
        np.testing.assert_allclose(ours, ref[k].numpy(), atol=TOL, rtol=0)
