"""Load any supported Hugging Face LLaVA checkpoint into the Flax model; save it back in llava-hf layout. A plain
LLaMA checkpoint also loads text-only (`load_language_model`), e.g. a Llama Guard judge, and a LLaMA score-head
classifier as one (`load_sequence_classifier`), e.g. a moderation judge.

Loading is streamed: the model is built abstractly (`nnx.eval_shape`, nothing allocated), then each parameter
is read, cast, stacked over layers and placed on its device sharding before the next is read, so host memory
peaks near one model plus one stacked parameter.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from vlguard_jax import storage
from vlguard_jax.checkpoints import names
from vlguard_jax.checkpoints.tensors import CheckpointError, TensorFile, open_tensor_files, \
    write_sharded
from vlguard_jax.models.classifier import ClassifierConfig, LlamaForSequenceClassification
from vlguard_jax.models.config import DECODER_FAMILIES, LlavaConfig, TextConfig
from vlguard_jax.models.llama import LlamaForCausalLM
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.parallel import LOGICAL_RULES, variable_sharding

VOCAB_ROWS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")  # one row a token


def grow_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """A [vocab, hidden] embedding or output matrix with rows appended up to `rows`, each the mean row (added
    tokens' rows, as llava-hf's conversion makes them, less its noise)."""
    mean = array.astype(np.float32).mean(axis=0, keepdims=True).astype(array.dtype)
    return np.concatenate([array, np.repeat(mean, rows - array.shape[0], axis=0)])


@dataclasses.dataclass
class ResolvedCheckpoint:
    """A checkpoint seen through the canonical (llava-hf on-disk) names, whatever its layout."""

    config: LlavaConfig | TextConfig  # TextConfig: a text-only LLaMA, its names those of HF `LlamaForCausalLM`
    tensors: dict[str, tuple[TensorFile, str]]  # canonical name → (file, name in that file)
    config_path: Path
    adapt: Callable[[str, np.ndarray], np.ndarray] = lambda name, array: array  # layout-specific fix-ups


def read_config(path: str | os.PathLike) -> tuple[Path, dict]:
    config_path = Path(path) / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path} not found: pass the checkpoint directory that holds config.json")
    return config_path, json.loads(config_path.read_text())


def resolve_checkpoint(path: str | os.PathLike, vision_tower: str | os.PathLike | None = None,
                       projector: str | os.PathLike | None = None) -> ResolvedCheckpoint:
    """`path` seen through canonical names. Its config.json's model_type picks the layout (`_layouts`); the separate
    parts a layout takes (a CLIP directory, a stage-1 projector file) come as arguments, and no others."""
    config_path, config = read_config(path)
    model_type = config.get("model_type")
    layouts = _layouts()
    if model_type not in layouts:
        supported = ", ".join(f"{name!r} ({description})" for name, (_, _, description) in layouts.items())
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not supported; supported are {supported}")
    resolve, takes, description = layouts[model_type]
    parts = {"vision_tower": vision_tower, "projector": projector}
    for name, value in parts.items():
        if value is not None and name not in takes:
            raise CheckpointError(f"{config_path}: model_type {model_type!r} ({description}) takes no separate "
                                  f"{name}, but {name}={value} was given; leave model.{name} unset")
    return resolve(Path(path), config_path, config, **{name: parts[name] for name in takes})


def _layouts() -> dict:
    """model_type → (resolver, the separate parts it takes, description)."""
    from vlguard_jax.checkpoints.original import resolve_original  # it builds on this module

    return {
        "llava": (_resolve_llava_hf, (), "llava-hf layout"),
        "llava_next": (_resolve_llava_hf, (), "llava-hf LLaVA-NeXT layout"),
        "llava_onevision": (_resolve_llava_hf, (), "llava-hf LLaVA-OneVision layout"),
        "minigpt_v2": (_resolve_minigptv2, (), "this project's MiniGPT-v2 layout (what export writes)"),
        "llava_llama": (resolve_original, ("vision_tower",), "original LLaVA, with vision_tower=CLIP_DIR"),
        "llama": (_resolve_plain_llama, ("vision_tower", "projector"),
                  "LLaMA / Vicuna: text-only, with vision_tower=CLIP_DIR and projector=LLaVA's stage-1 "
                  "mm_projector.bin, or (Llama-2-chat) with vision_tower=eva_vit_g.pth and "
                  "projector=minigptv2_checkpoint.pth: MiniGPT-v2"),
    }


def _resolve_plain_llama(path: Path, config_path: Path, config: dict, vision_tower, projector) -> ResolvedCheckpoint:
    """A plain LLaMA: a text-only model, with LLaVA's stage-1 parts the LLaVA they build, or with MiniGPT-v2's parts
    (an EVA weights file for the tower) MiniGPT-v2."""
    if vision_tower is None and projector is None:
        return _resolve_single(path, config_path, config, LlavaConfig.from_hf,
                               lambda key, llava: names.canonical_llama(key, llava.text.tie_word_embeddings))
    from vlguard_jax.checkpoints.minigpt import is_eva, resolve_minigptv2
    from vlguard_jax.checkpoints.original import resolve_stage1

    if vision_tower is not None and is_eva(vision_tower):
        return resolve_minigptv2(path, config_path, config, vision_tower, projector)

    return resolve_stage1(path, config_path, config, vision_tower, projector)


def _resolve_llava_hf(path: Path, config_path: Path, config: dict) -> ResolvedCheckpoint:
    return _resolve_single(path, config_path, config, LlavaConfig.from_hf,
                           lambda key, _: names.canonical_llava_hf(key))


def _resolve_minigptv2(path: Path, config_path: Path, config: dict) -> ResolvedCheckpoint:
    """Written by `save_pretrained`: the canonical names themselves."""
    return _resolve_single(path, config_path, config, LlavaConfig.from_hf, lambda key, _: key)


def _resolve_single(path: Path, config_path: Path, config: dict, parse_config: Callable,
                    canonical: Callable) -> ResolvedCheckpoint:
    """A checkpoint that is one directory: its config parsed (errors name the file) and each tensor under
    `canonical(key, parsed_config)`, skipped where that is None."""
    try:
        parsed = parse_config(config)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    tensors: dict[str, tuple[TensorFile, str]] = {}
    for key, tensor_file in open_tensor_files(path).items():
        name = None if names.IGNORED.search(key) else canonical(key, parsed)
        if name is not None:
            add_tensor(tensors, name, tensor_file, key)
    return ResolvedCheckpoint(parsed, tensors, config_path)


def add_tensor(tensors: dict, canonical: str, tensor_file: TensorFile, key: str) -> None:
    if canonical in tensors:
        other_file, other_key = tensors[canonical]
        raise CheckpointError(
            f"{tensor_file.path}: '{key}' and '{other_key}' ({other_file.path}) are the same parameter in two "
            f"layouts; keep one copy of the weights in the directory"
        )
    tensors[canonical] = (tensor_file, key)


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
                    vision_tower: str | os.PathLike | None = None, projector: str | os.PathLike | None = None,
                    mesh: Mesh | None = None, rules=LOGICAL_RULES,
                    remat: str = "none") -> LlavaForConditionalGeneration:
    """Reads a local LLaVA checkpoint directory (any layout of REFERENCE §2, or a LLaMA / Vicuna directory with
    `projector` and `vision_tower`: LLaVA's stage-1 parts) into the Flax model.

    `dtype` is the compute dtype; parameters are stored in `param_dtype` (default: `dtype`). With a `mesh`, each
    parameter lands directly on its sharding from the logical-axis `rules`.
    """
    resolved = resolve_checkpoint(path, vision_tower, projector)
    return build_model(resolved, LlavaForConditionalGeneration, dtype=dtype, param_dtype=param_dtype or dtype,
                       mesh=mesh, rules=rules, remat=remat)


def load_language_model(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None, mesh: Mesh | None = None,
                        rules=LOGICAL_RULES, remat: str = "none") -> LlamaForCausalLM:
    """A plain decoder checkpoint (HF `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`) as a text-only
    model, which `Generator`
    runs without images; `load_pretrained` reads the same directory plus a projector and CLIP as LLaVA stage 1.

    The decoder's parameter paths are HF's own tensor names, so the weights need no renaming; a tied checkpoint's
    `lm_head.weight`, where a writer kept it, is the embedding itself and is skipped."""
    resolved = _resolve_llama(path, TextConfig.from_hf,
                              lambda key, text: None if text.tie_word_embeddings and key == "lm_head.weight" else key)
    return build_model(resolved, LlamaForCausalLM, dtype=dtype, param_dtype=param_dtype or dtype, mesh=mesh,
                       rules=rules, remat=remat)


def load_sequence_classifier(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
                             mesh: Mesh | None = None, rules=LOGICAL_RULES) -> LlamaForSequenceClassification:
    """A LLaMA score-head checkpoint (HF `LlamaForSequenceClassification`, e.g. a moderation model): the decoder
    body plus `score.weight` `[labels, hidden]`, labelled by config.json's `id2label`."""
    resolved = _resolve_llama(path, ClassifierConfig.from_hf, lambda key, _: key)
    if "score.weight" not in resolved.tensors:
        files = sorted({str(tensor_file.path) for tensor_file, _ in resolved.tensors.values()})
        raise CheckpointError(f"{resolved.config_path.parent}: no tensor 'score.weight' in {listing(files)}: not a "
                              f"sequence-classification checkpoint (a causal LM's lm_head is no score head)")
    return build_model(resolved, LlamaForSequenceClassification, dtype=dtype, param_dtype=param_dtype or dtype,
                       mesh=mesh, rules=rules, remat="none")


def _resolve_llama(path: str | os.PathLike, parse_config: Callable, canonical: Callable) -> ResolvedCheckpoint:
    """A text-only decoder directory (model_type llama, mistral or qwen2) through HF's own tensor names."""
    config_path, config = read_config(path)
    if config.get("model_type") not in DECODER_FAMILIES:
        raise CheckpointError(f"{config_path}: model_type {config.get('model_type')!r} is not a text-only decoder "
                              f"checkpoint ({', '.join(DECODER_FAMILIES)}); load LLaVA checkpoints with "
                              f"load_pretrained")
    return _resolve_single(Path(path), config_path, config, parse_config, canonical)


def build_model(resolved: ResolvedCheckpoint, model_class: type, *, dtype, param_dtype, mesh: Mesh | None, rules,
                remat: str):
    """`model_class(resolved.config)` built abstractly, then filled with the checkpoint's weights."""
    abstract = nnx.eval_shape(lambda: model_class(
        resolved.config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    place = lambda path, var: None if mesh is None else variable_sharding(var, mesh, rules)
    return nnx.merge(graphdef, load_state(resolved, state, place))


def load_state(resolved: ResolvedCheckpoint, abstract: nnx.State, sharding_of: Callable,
               dtype_of: Callable | None = None, on_tensor: Callable[[tuple], None] | None = None,
               select: set | None = None) -> nnx.State:
    """The values of an abstract State (every weight of the checkpoint) read one parameter at a time.

    Each parameter is read into host memory, cast to `dtype_of(path, var)` (default: the abstract dtype) and
    handed to `device_put` with `sharding_of(path, var)`, which sends every device only its own slice: no device
    ever holds an unsharded copy. `select`: the paths to read (default: all; the names are checked against the
    whole State either way). `on_tensor(path)` runs after each placement (progress, memory probes)."""
    flat = nnx.to_flat_state(abstract)
    expected = {path: _names_of(path, var) for path, var in flat}
    _check_names({n for ns in expected.values() for n in ns}, resolved)
    loaded = []
    for path, var in flat:
        if select is not None and path not in select:
            continue
        dtype = jnp.dtype(var.dtype if dtype_of is None else dtype_of(path, var))
        host = np.empty(var.shape, dtype)
        stacked = "layers" in path
        for i, name in enumerate(expected[path]):
            if stacked:
                host[i] = _read(resolved, name, var.shape[1:])
            else:
                host[...] = _read(resolved, name, var.shape)
        loaded.append((path, var.replace(jax.device_put(host, sharding_of(path, var)))))
        del host
        if on_tensor is not None:
            on_tensor(path)
    return nnx.from_flat_state(loaded)


def _names_of(path: tuple, var) -> list[str]:
    return names.hf_names([str(p) for p in path], var.shape[0] if "layers" in path else None)


def _check_names(expected: set[str], resolved: ResolvedCheckpoint) -> None:
    missing = sorted(expected - resolved.tensors.keys())
    unexpected = sorted(resolved.tensors.keys() - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {listing(unexpected)}")
        raise CheckpointError(
            f"{resolved.config_path.parent}: the weights do not match {resolved.config_path.name} "
            f"({'; '.join(parts)}). Use the config.json that came with these weights."
        )


def listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def _read(resolved: ResolvedCheckpoint, name: str, our_shape: tuple[int, ...]) -> np.ndarray:
    tensor_file, key = resolved.tensors[name]
    kind = names.param_path(name)[2]
    array = resolved.adapt(name, tensor_file.read(key))
    expected = names.torch_shape(kind, our_shape)
    if tuple(array.shape) != expected:
        raise CheckpointError(
            f"{tensor_file.path}: tensor '{key}' has shape {tuple(array.shape)} but {resolved.config_path} implies "
            f"{expected}; the weights and config.json disagree: use the config.json that came with these weights"
        )
    return names.to_ours(kind, array)


def save_pretrained(model: LlavaForConditionalGeneration, path: str | os.PathLike, *, dtype=None,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Writes llava-hf on-disk layout (safetensors shards + config.json) that transformers loads as is; a text-only
    model as HF `LlamaForCausalLM`; a MiniGPT-v2 (EVA tower) in this project's `minigpt_v2` layout (canonical names).

    A model built from LLaVA's stage-1 parts keeps the LLM's vocabulary with `<image>` past its end, which
    transformers cannot look up: its embedding and lm_head get rows up to a multiple of 64 past `<image>`, as
    llava-hf's conversion gives, filled with the mean row (the `<image>` row is overwritten by image features)."""
    path = storage.path(path)
    hf_config = model.config.to_hf()  # fails early for configs llava-hf cannot express
    vocab = model.config.text.vocab_size
    text_only = model.config.vision is None  # written as HF `LlamaForCausalLM`
    llava_hf = model.config.layout not in ("llama", "minigpt_v2")  # transformers looks `<image>` up: it needs a row
    rows = vocab if not llava_hf or model.config.image_token_id < vocab else \
        -(-(model.config.image_token_id + 1) // 64) * 64
    if not text_only:
        hf_config["text_config"]["vocab_size"] = rows
    on_disk = names.llama_name if text_only else (lambda name: name)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    out_dtype = None if dtype is None else jnp.dtype(dtype)

    def tensors():
        for param_path, var in flat:
            value = var[...]
            for i, name in enumerate(_names_of(param_path, var)):
                array = np.asarray(value[i] if "layers" in param_path else value)
                if out_dtype is not None:
                    array = array.astype(out_dtype)
                array = names.to_torch(names.param_path(name)[2], array)
                yield on_disk(name), grow_rows(array, rows) if rows > vocab and name in VOCAB_ROWS else array

    write_sharded(tensors(), path, max_shard_bytes)
    stored = out_dtype or jnp.dtype(flat[0][1].dtype)
    storage.write_json(path / "config.json", {**hf_config, "dtype": str(stored)}, indent=2)
    return path

