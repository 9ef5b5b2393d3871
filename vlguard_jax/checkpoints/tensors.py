"""Tensor files of a checkpoint directory: read lazily one tensor at a time, written in size-bounded shards.

Safetensors are memory-mapped; PyTorch pickles (`.bin`) are read only with `torch.load(weights_only=True)` and
only when torch is installed. Errors name the file and say how to fix it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from vlguard_jax import storage

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and the fix."""


class TensorFile:
    """One `.safetensors` or `.bin` file; tensors come back as numpy arrays in their stored dtype."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            self._handle = safe_open(str(path), framework="np")
            self._tensors = None
            self.keys = list(self._handle.keys())
        else:
            self._handle = None
            self._tensors = _torch_load(path)
            self.keys = list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._handle is not None:
            return tuple(self._handle.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def read(self, key: str) -> np.ndarray:
        if self._handle is not None:
            return self._handle.get_tensor(key)
        return _torch_to_numpy(self._tensors[key])


def _torch_load(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a PyTorch pickle needs torch, which is not installed. Install it "
            f"(pip install torch) or convert the file to safetensors first."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated or non-tensor pickle
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({e}); re-download the file") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # LAVIS / MiniGPT: {"model": …, "optimizer": …}
        state = state["model"]
    return state


class ArrayFile:
    """Tensors made in memory (weights a checkpoint omits because its model fixes them), read like a `TensorFile`;
    `path` says where they come from in error messages."""

    def __init__(self, path: str, tensors: dict[str, np.ndarray]):
        self.path = path
        self._tensors = tensors
        self.keys = list(tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def read(self, key: str) -> np.ndarray:
        return self._tensors[key]


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def open_tensor_files(directory: str | os.PathLike) -> dict[str, TensorFile]:
    """Maps every tensor name in a checkpoint directory to the file holding it (sharded or not)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; pass the folder holding config.json and the weights")
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index_path = directory / index_name
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            shard_names = sorted(set(weight_map.values()))
            missing = [s for s in shard_names if not (directory / s).exists()]
            if missing:
                raise CheckpointError(
                    f"{index_path} lists {len(shard_names)} shards but {len(missing)} are missing: "
                    f"{', '.join(missing)}. Download the missing shard files into {directory}."
                )
            files = [directory / s for s in shard_names]
            break
    else:
        files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
        if not files:
            raise CheckpointError(
                f"{directory}: no weights found (expected model.safetensors, a sharded safetensors index, "
                f"or pytorch_model*.bin)"
            )
    by_key: dict[str, TensorFile] = {}
    for path in files:
        tensor_file = TensorFile(path)
        for key in tensor_file.keys:
            by_key[key] = tensor_file
    return by_key


def write_sharded(tensors: Iterable[tuple[str, np.ndarray]], directory: str | os.PathLike,
                  max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes `(name, array)` pairs as safetensors shards (+ index when more than one), each file atomically.

    Arrays are consumed one at a time, so at most one shard is held in memory.
    """
    directory = storage.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = []
    for shard in _group_by_size(tensors, max_shard_bytes):
        shards.append({k: np.empty(0) for k in shard})  # only the names are kept
        storage.write_file(directory / f"shard-{len(shards):05d}.tmp",
                           lambda name, shard=shard: save_file(shard, name, metadata={"format": "pt"}))
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for i, name in enumerate(names):
        storage.move(directory / f"shard-{i + 1:05d}.tmp", directory / name)
    for stale in set(p.name for p in directory.glob("model*.safetensors")) - set(names):
        (directory / stale).unlink()  # shards of an earlier save with another shard count
    index_path = directory / SAFETENSORS_INDEX
    if len(shards) > 1:
        weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
        storage.write_json(index_path, {"metadata": {}, "weight_map": weight_map}, indent=2)
    elif index_path.exists():
        index_path.unlink()
    return names


def _group_by_size(tensors: Iterable[tuple[str, np.ndarray]], max_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    shard: dict[str, np.ndarray] = {}
    size = 0
    for name, array in tensors:
        if shard and size + array.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = np.ascontiguousarray(array)
        size += array.nbytes
    if shard:
        yield shard
