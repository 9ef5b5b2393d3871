"""Original LLaVA checkpoints (`model_type: llava_llama`, e.g. liuhaotian/llava-v1.5-7b) plus a CLIP directory.

They are read as the llava-hf conversion of the same weights: the `<image>` token becomes id `vocab_size`,
`<pad>` the next id, and the vocabulary is padded to a multiple of 64. The added embedding and output rows are
the mean of the existing rows (the llava-hf conversion samples them around that mean).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from vlguard_jax.checkpoints import names
from vlguard_jax.checkpoints.hf import ResolvedCheckpoint, add_tensor, read_config
from vlguard_jax.checkpoints.tensors import CheckpointError, open_tensor_files
from vlguard_jax.models.config import LlavaConfig, TextConfig, VisionConfig

_PROJECTOR = re.compile(r"^model\.mm_projector\.(?:(\d+)\.)?(weight|bias)$")
_STRATEGIES = {"patch": "default", "cls_patch": "full"}
_VOCAB_ROWS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")


def padded_vocab(base_vocab: int) -> int:
    return -(-(base_vocab + 2) // 64) * 64


def resolve_original(path: Path, config_path: Path, config: dict, vision_tower) -> ResolvedCheckpoint:
    vision_dir = _vision_dir(config_path, config, vision_tower)
    vision_config_path, clip_config = read_config(vision_dir)
    if clip_config.get("model_type") == "clip":
        clip_config = clip_config.get("vision_config") or {}
    vision = VisionConfig.from_hf(clip_config)
    if config.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise CheckpointError(
            f"{config_path}: mm_hidden_size {config['mm_hidden_size']} does not match the hidden size "
            f"{vision.hidden_size} of the vision tower in {vision_config_path}; pass the CLIP checkpoint this "
            f"model was trained with"
        )
    base_vocab = config.get("vocab_size", 32000)
    text = dataclasses.replace(TextConfig.from_hf(config), vocab_size=padded_vocab(base_vocab),
                               pad_token_id=base_vocab + 1)
    select = config.get("mm_vision_select_feature", "patch")
    if select not in _STRATEGIES:
        raise CheckpointError(f"{config_path}: mm_vision_select_feature {select!r} is not supported (patch, cls_patch)")
    try:
        llava_config = LlavaConfig(
            vision=vision, text=text, projector_type=config.get("mm_projector_type", "linear"),
            image_token_id=base_vocab, vision_feature_layer=config.get("mm_vision_select_layer", -2),
            vision_feature_select_strategy=_STRATEGIES[select])
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from e

    tensors: dict = {}
    for key, tensor_file in open_tensor_files(vision_dir).items():
        if key.startswith("vision_model.") and not names.IGNORED.search(key):
            tensors["vision_tower." + key] = (tensor_file, key)
    own_tower = "model.vision_tower.vision_tower."
    for key, tensor_file in open_tensor_files(path).items():
        if names.IGNORED.search(key):
            continue
        if key.startswith(own_tower):  # a tower fine-tuned along with the model wins over the CLIP directory
            tensors["vision_tower." + key[len(own_tower):]] = (tensor_file, key)
        else:
            add_tensor(tensors, _canonical(key), tensor_file, key)

    def adapt(name: str, array: np.ndarray) -> np.ndarray:
        if name in _VOCAB_ROWS and array.shape[0] == base_vocab:
            mean = array.astype(np.float32).mean(axis=0, keepdims=True).astype(array.dtype)
            return np.concatenate([array, np.repeat(mean, text.vocab_size - base_vocab, axis=0)])
        return array

    return ResolvedCheckpoint(llava_config, tensors, config_path, adapt)


def _vision_dir(config_path: Path, config: dict, vision_tower) -> Path:
    if vision_tower is not None:
        return Path(vision_tower)
    named = config.get("mm_vision_tower")
    if named and Path(named).is_dir():
        return Path(named)
    raise CheckpointError(
        f"{config_path}: an original LLaVA checkpoint holds no vision weights; pass the CLIP checkpoint directory "
        f"(a local copy of {named or 'its CLIP vision tower'}) as vision_tower=DIR (CLI: --vision-tower DIR)"
    )


def _canonical(key: str) -> str:
    projector = _PROJECTOR.match(key)
    if projector:
        index, leaf = projector.groups()
        return f"multi_modal_projector.linear_{int(index or 0) // 2 + 1}.{leaf}"
    if key.startswith("model."):
        return "language_model.model." + key[len("model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    return key  # left as is: reported as unexpected
