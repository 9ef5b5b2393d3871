"""MiniGPT-v2 from its released parts, read as MiniGPT-v2 (Vision-CAIR/MiniGPT-4) builds its model:

- `vision_tower`: the EVA-CLIP ViT-g weights (`eva_vit_g.pth`, EVA/LAVIS names), the file or a directory holding it
  (and optionally a `config.json` of `model_type: eva_vit`; without one, MiniGPT-v2's tower: `EvaVisionConfig()`).
  The first `num_layers` (39) of its 40 blocks are kept, as `create_eva_vit_g(depth=39)` with `strict=False`
  keeps them; the fused `qkv` weight is split into q, k and v (k has no bias); the 224-px position embedding is
  resized to the model's grid as `interpolate_pos_embed` does (torch's bicubic, `align_corners=False`, class
  position kept).
- `path`: the Llama-2-7b-chat directory (HF `LlamaForCausalLM`).
- `projector`: the MiniGPT-v2 checkpoint (`{"model": …}`): `llama_proj.*` (the projector) and the LoRA weights of
  the LLM (`llama_model.base_model.model.<module>.lora_A/lora_B.weight`). The LoRA deltas are folded into the base
  weights they adapt, `W + α/r·B·A` in fp32 (r from their shape, α 16 as MiniGPT-v2's config sets it): the model as
  released, which a run's own adapters then start from.
- `ln_vision` is MiniGPT-v2's freshly made LayerNorm (weight 1, bias 0: it is frozen, so its training checkpoints
  omit it) unless the checkpoint holds it. The vocabulary is the LLM's; `<image>` is the id just past it (never
  looked up: its positions take image features); padding is `<unk>` (MiniGPT-v2 pads with "$$"; pads are masked).

Everything is checked before a weight is read: shapes against the config, every key of every file used or named.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from vlguard_jax.checkpoints import names
from vlguard_jax.checkpoints.hf import ResolvedCheckpoint, add_tensor, listing
from vlguard_jax.checkpoints.tensors import ArrayFile, CheckpointError, TensorFile, open_tensor_files
from vlguard_jax.models.config import EvaVisionConfig, LlavaConfig, TextConfig

LORA_ALPHA = 16.0  # MiniGPT-v2's lora_alpha (configs/models/minigpt_v2.yaml; its r, 64, is read from the weights)
EVA_WEIGHTS = "eva_vit_g.pth"
_UNK = 0
_TOWER = "vision_tower."
_LAYER = "vision_tower.encoder.layers.{}."
_EVA_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding.weight",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias"}
_EVA_BLOCK = {"norm1.weight": "layer_norm1.weight", "norm1.bias": "layer_norm1.bias",
              "attn.q_bias": "self_attn.q_proj.bias", "attn.v_bias": "self_attn.v_proj.bias",
              "attn.proj.weight": "self_attn.out_proj.weight", "attn.proj.bias": "self_attn.out_proj.bias",
              "norm2.weight": "layer_norm2.weight", "norm2.bias": "layer_norm2.bias",
              "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
              "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias"}
_QKV = ("q_proj", "k_proj", "v_proj")
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_LORA_KEY = re.compile(r"llama_model\.base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight")
_PROJECTOR = {"llama_proj.weight": "multi_modal_projector.linear_1.weight",
              "llama_proj.bias": "multi_modal_projector.linear_1.bias"}
_LN_VISION = ("ln_vision.weight", "ln_vision.bias")


def is_eva(vision_tower) -> bool:
    """Whether `vision_tower` names EVA weights (a file, or a directory holding `eva_vit_g.pth`) rather than a CLIP
    checkpoint directory."""
    path = Path(vision_tower)
    return path.is_file() or (path / EVA_WEIGHTS).is_file()


def resolve_minigptv2(path: Path, config_path: Path, config: dict, vision_tower, projector) -> ResolvedCheckpoint:
    if projector is None:
        raise CheckpointError(f"{config_path}: an EVA tower joins this LLM as MiniGPT-v2, whose llama_proj comes "
                              f"from the MiniGPT-v2 checkpoint: pass it as projector=FILE (config: model.projector)")
    eva_path, vision = _eva_source(Path(vision_tower))
    text = dataclasses.replace(TextConfig.from_hf(config), pad_token_id=_UNK)
    llava = LlavaConfig(vision=vision, text=text, projector_type="concat4", image_token_id=text.vocab_size,
                        vision_feature_layer=-1, model_type="minigpt_v2")
    tensors: dict = {}
    fixes = _eva_tensors(TensorFile(eva_path), vision, tensors)
    for key, tensor_file in open_tensor_files(path).items():
        if not names.IGNORED.search(key):
            add_tensor(tensors, names.canonical_llama(key, text.tie_word_embeddings), tensor_file, key)
    checkpoint = _open(Path(projector))
    fixes.update(_minigpt_tensors(checkpoint, vision, tensors))

    def adapt(name: str, array: np.ndarray) -> np.ndarray:
        return fixes[name](array) if name in fixes else array

    return ResolvedCheckpoint(llava, tensors, config_path, adapt)


def _eva_source(vision_tower: Path) -> tuple[Path, EvaVisionConfig]:
    """The EVA weights file and the tower's hyper-parameters (a `config.json` beside the weights, else MiniGPT-v2's)."""
    weights = vision_tower if vision_tower.is_file() else vision_tower / EVA_WEIGHTS
    config_path = weights.parent / "config.json"
    if not vision_tower.is_dir() or not config_path.exists():
        return weights, EvaVisionConfig()
    raw = json.loads(config_path.read_text())
    if raw.get("model_type") != EvaVisionConfig.model_type:
        raise CheckpointError(f"{config_path}: model_type {raw.get('model_type')!r} beside {weights.name} is not "
                              f"'{EvaVisionConfig.model_type}'; remove it to use MiniGPT-v2's EVA-CLIP ViT-g")
    return weights, EvaVisionConfig.from_hf(raw)


def _open(path: Path) -> TensorFile:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; pass MiniGPT-v2's checkpoint (minigptv2_checkpoint.pth) as "
                              f"projector=FILE (config: model.projector)")
    return TensorFile(path)


def _eva_tensors(eva: TensorFile, vision: EvaVisionConfig, tensors: dict) -> dict:
    """The tower's tensors under canonical names; returns the fix-ups (reshape, split, resize) by canonical name."""
    d = vision.hidden_size
    fixes = {_TOWER + "embeddings.class_embedding": lambda a: a.reshape(-1),
             _TOWER + "embeddings.position_embedding.weight": lambda a: _resized_positions(a, vision, eva.path)}
    blocks = set()
    for key in eva.keys:
        block = _BLOCK_KEY.fullmatch(key)
        if block is None:
            add_tensor(tensors, _TOWER + _EVA_TOP[key] if key in _EVA_TOP else key, eva, key)
            continue
        index, inner = int(block[1]), block[2]
        blocks.add(index)
        if index >= vision.num_layers:  # MiniGPT-v2 builds one block fewer than EVA-g has
            continue
        prefix = _LAYER.format(index)
        if inner == "attn.qkv.weight":
            for part, proj in enumerate(_QKV):
                name = f"{prefix}self_attn.{proj}.weight"
                add_tensor(tensors, name, eva, key)
                fixes[name] = lambda a, part=part: a[part * d:(part + 1) * d]
        else:
            add_tensor(tensors, prefix + _EVA_BLOCK[inner] if inner in _EVA_BLOCK else key, eva, key)
    if len(blocks) < vision.num_layers:
        raise CheckpointError(f"{eva.path}: {len(blocks)} blocks, fewer than the {vision.num_layers} the tower "
                              f"uses; pass EVA-CLIP ViT-g's eva_vit_g.pth")
    return fixes


def _resized_positions(pos_embed: np.ndarray, vision: EvaVisionConfig, path) -> np.ndarray:
    """`[1, 1 + n², d]` → `[1 + g², d]` for the model's `g × g` patch grid (MiniGPT-v2's `interpolate_pos_embed`)."""
    table = pos_embed.reshape(-1, pos_embed.shape[-1]).astype(np.float32)
    side = int(round((table.shape[0] - 1) ** 0.5))
    if side * side != table.shape[0] - 1:
        raise CheckpointError(f"{path}: pos_embed holds {table.shape[0] - 1} patch positions, not a square grid")
    grid = vision.image_size // vision.patch_size
    if side == grid:
        return table
    patches = bicubic_resize(table[1:].reshape(side, side, -1), grid).reshape(grid * grid, -1)
    return np.concatenate([table[:1], patches.astype(np.float32)])


def bicubic_resize(grid: np.ndarray, size: int) -> np.ndarray:
    """`[h, w, c]` → `[size, size, c]` as `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
    (no antialiasing) computes it: cubic convolution with a = -0.75, source index `(i + 0.5)·in/out − 0.5`, edge
    samples repeated; in float64."""
    height, width = grid.shape[:2]
    return np.einsum("ih,jw,hwc->ijc", _cubic_matrix(height, size), _cubic_matrix(width, size),
                     grid.astype(np.float64))


def _cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    a = -0.75
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    start = np.floor(source)
    t = source - start
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| ≤ 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    matrix = np.zeros((n_out, n_in))
    for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
        np.add.at(matrix, (np.arange(n_out), np.clip(start + offset, 0, n_in - 1).astype(int)), weight)
    return matrix


def _minigpt_tensors(checkpoint: TensorFile, vision: EvaVisionConfig, tensors: dict) -> dict:
    """The projector (and `ln_vision`, fresh where absent) under canonical names; returns the LoRA folds."""
    lora: dict[str, dict[str, str]] = {}
    unknown = []
    for key in checkpoint.keys:
        match = _LORA_KEY.fullmatch(key)
        if match:
            lora.setdefault(f"language_model.{match[1]}.weight", {})[match[2]] = key
        elif key in _PROJECTOR:
            add_tensor(tensors, _PROJECTOR[key], checkpoint, key)
        elif key in _LN_VISION:
            add_tensor(tensors, _TOWER + key, checkpoint, key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{checkpoint.path}: {len(unknown)} tensors that are not MiniGPT-v2's llama_proj, "
                              f"ln_vision or LoRA weights: {listing(sorted(unknown))}; pass minigptv2_checkpoint.pth")
    fresh = {"ln_vision.weight": np.ones(vision.hidden_size, np.float32),
             "ln_vision.bias": np.zeros(vision.hidden_size, np.float32)}
    fresh = ArrayFile(f"{checkpoint.path} (ln_vision as MiniGPT-v2 makes it: weight 1, bias 0)", fresh)
    for key in _LN_VISION:
        tensors.setdefault(_TOWER + key, (fresh, key))
    folds = {}
    for name, pair in lora.items():
        if set(pair) != {"A", "B"} or name not in tensors:
            raise CheckpointError(f"{checkpoint.path}: LoRA weights {sorted(pair.values())} adapt no weight of the "
                                  f"LLM (or lack their lora_A / lora_B half); pass the checkpoint of this LLM")
        folds[name] = _fold(checkpoint, pair["A"], pair["B"])
    return folds


def _fold(checkpoint: TensorFile, a_key: str, b_key: str):
    def fold(weight: np.ndarray) -> np.ndarray:
        a = checkpoint.read(a_key).astype(np.float32)  # [r, in]
        b = checkpoint.read(b_key).astype(np.float32)  # [out, r]
        if b.shape != (weight.shape[0], a.shape[0]) or a.shape[1] != weight.shape[1]:
            raise CheckpointError(f"{checkpoint.path}: {a_key} {a.shape} and {b_key} {b.shape} do not adapt a "
                                  f"{weight.shape} weight; pass the checkpoint of this LLM")
        return weight.astype(np.float32) + (LORA_ALPHA / a.shape[0]) * (b @ a)

    return fold
