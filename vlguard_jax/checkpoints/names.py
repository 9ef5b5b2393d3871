"""The rename-and-transpose table between Hugging Face tensor names and the model's parameter paths.

Canonical names are the llava-hf on-disk layout (`vision_tower.vision_model.…`, `multi_modal_projector.…`,
`language_model.model.…`, `language_model.lm_head.weight`): every accepted layout is first normalised to them.
Module attribute names equal HF's, so only the leaf name, the layer index and the transpose change.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_RUNTIME_PREFIXES = (  # transformers ≥ 4.52 / v5 runtime names → on-disk names
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    ("model.image_newline", "image_newline"),
)
# Buffers some writers store that are not parameters.
IGNORED = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")


def canonical_llava_hf(key: str) -> str:
    """Any llava-hf layout (on-disk, v5 runtime, with or without `vision_model.`) → on-disk name."""
    for old, new in _RUNTIME_PREFIXES:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def canonical_llama(key: str, tied: bool) -> str | None:
    """A plain LLaMA's name (HF `LlamaForCausalLM`: `model.…`, `lm_head.weight`) → the canonical name of the same
    parameter in a text-only model; None for a tied checkpoint's `lm_head.weight` (the embedding itself)."""
    if key.startswith("lm_head."):
        return None if tied else "language_model." + key
    return "language_model." + key


def llama_name(canonical: str) -> str:
    """A text-only model's canonical name → HF `LlamaForCausalLM`'s (on disk and at runtime)."""
    return canonical[len("language_model."):] if canonical.startswith("language_model.") else canonical


def _leaf_kind(parent: str, leaf: str) -> str:
    if leaf in ("bias", "class_embedding", "image_newline"):
        return "copy"
    if parent == "patch_embedding":
        return "conv"
    if parent in ("embed_tokens", "position_embedding"):
        return "embedding"
    if "norm" in parent or "layrnorm" in parent or parent == "ln_vision":
        return "norm"
    return "linear"


_OUR_LEAF = {"conv": "kernel", "linear": "kernel", "embedding": "embedding", "norm": "scale"}
_HF_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight"}


def param_path(name: str) -> tuple[tuple[str, ...], int | None, str]:
    """Canonical name → (parameter path, layer index or None, transform kind)."""
    parts = name.split(".")
    layer = None
    if "layers" in parts:
        i = parts.index("layers")
        layer = int(parts[i + 1])
        parts = parts[: i + 1] + parts[i + 2:]
    parent = parts[-2] if len(parts) > 1 else ""
    kind = _leaf_kind(parent, parts[-1])
    if kind != "copy":
        parts[-1] = _OUR_LEAF[kind]
    return tuple(parts), layer, kind


def hf_names(path: Sequence[str], num_layers: int | None) -> list[str]:
    """Parameter path → its canonical names: one, or one per layer of a stacked parameter."""
    parts = list(path)
    if parts[-1] in _HF_LEAF and parts[-1] != "bias":
        parts[-1] = _HF_LEAF[parts[-1]]
    if "layers" not in parts:
        return [".".join(parts)]
    i = parts.index("layers")
    return [".".join(parts[: i + 1] + [str(n)] + parts[i + 1:]) for n in range(num_layers)]


_TO_OURS = {"linear": (1, 0), "conv": (2, 3, 1, 0)}  # torch Linear [out, in], Conv2d [out, in, kh, kw]
_TO_TORCH = {"linear": (1, 0), "conv": (3, 2, 0, 1)}


def to_ours(kind: str, array: np.ndarray) -> np.ndarray:
    """torch layout → ours: Linear `[out, in]` → `[in, out]`; Conv2d `[out, in, kh, kw]` → `[kh, kw, in, out]`."""
    return array.transpose(_TO_OURS[kind]) if kind in _TO_OURS else array


def to_torch(kind: str, array: np.ndarray) -> np.ndarray:
    return array.transpose(_TO_TORCH[kind]) if kind in _TO_TORCH else array


def torch_shape(kind: str, shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[p] for p in _TO_TORCH[kind]) if kind in _TO_TORCH else tuple(shape)
