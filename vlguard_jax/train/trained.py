"""The trained model of a workdir, on any mesh: the frozen base rebuilt from the run's config onto the mesh, the
newest checkpoint's trainable parameters restored onto the same shardings (never the optimizer state)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from vlguard_jax import storage
from vlguard_jax.config import Config, load_config
from vlguard_jax.data.recipes import synthetic_dataset
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.parallel import make_mesh
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.setup import build, load_tokenizer
from vlguard_jax.train.trainable import trainable_filter


def tokenizer_dir(config: Config, workdir: storage.PathLike) -> Path:
    """A local folder: a run in a bucket keeps its synthetic data's tokenizer in this host's cache (made here when
    absent)."""
    if config.model.tokenizer:
        return Path(config.model.tokenizer)
    if config.data.synthetic:
        return synthetic_dataset(config.data, workdir)["tokenizer"]
    return Path(config.model.path)


def is_workdir(path: storage.PathLike) -> bool:
    path = storage.path(path)
    return (path / "config.yaml").exists() and (path / "checkpoints").exists()


def load_trained(workdir: str | Path, step: int | None = None, mesh: Mesh | None = None,
                 dtype=None) -> tuple[LlavaForConditionalGeneration, Config]:
    """`dtype`: the compute dtype and that of the frozen weights (default: the run's); trained weights stay fp32.
    `mesh`: default one device."""
    workdir = storage.path(workdir)
    config = load_config(workdir / "config.yaml")
    setup = _frozen_setup(config, workdir, mesh, dtype)
    return setup.model(_restore(workdir, setup, step)), config


def load_adapters(workdirs: Sequence[str | Path], mesh: Mesh | None = None, dtype=None
                  ) -> tuple[LlavaForConditionalGeneration, list[nnx.State], Config]:
    """K LoRA runs of one recipe over one base, for `evaluate_adapters`: the base built once (from the first
    run's config), each run's newest trainable leaves (adapters and projector) restored onto its shardings."""
    workdirs = [storage.path(w) for w in workdirs]
    configs = [load_config(w / "config.yaml") for w in workdirs]
    first = configs[0]
    for workdir, config in zip(workdirs, configs):
        if config.train.mode != "lora" or config.model != first.model or config.train.lora != first.train.lora:
            raise ValueError(f"{workdir} is not a LoRA run of {workdirs[0]}'s base and adapter shape (train.mode, "
                             f"model and train.lora must match): evaluate it on its own")
    setup = _frozen_setup(first, workdirs[0], mesh, dtype)
    models = [setup.model(_restore(workdir, setup)) for workdir in workdirs]
    return models[0], [nnx.state(model, trainable_filter("lora")) for model in models], first


def _frozen_setup(config: Config, workdir: Path, mesh: Mesh | None, dtype):
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    return build(config, mesh, values="frozen", dtype=dtype,
                 tokenizer=load_tokenizer(config, tokenizer_dir(config, workdir)))


def _restore(workdir: Path, setup, step: int | None = None) -> dict:
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint; train first")
    params = checkpointer.restore_params(step, setup.params)
    checkpointer.close()
    return params


def load_model_and_tokenizer(path: str | Path, dtype=jnp.float32, mesh: Mesh | None = None):
    """A checkpoint directory (config.json + weights + tokenizer) or a training workdir (base + checkpoint)."""
    from transformers import AutoTokenizer

    from vlguard_jax.checkpoints.hf import load_pretrained
    from vlguard_jax.checkpoints.tokenizer import add_model_tokens

    if is_workdir(path):
        path = storage.path(path)
        model, config = load_trained(path, mesh=mesh, dtype=dtype)
        return model, load_tokenizer(config, tokenizer_dir(config, path))
    model, tokenizer = load_pretrained(path, dtype=dtype, mesh=mesh), AutoTokenizer.from_pretrained(path)
    add_model_tokens(tokenizer, model.config, path)  # e.g. an export of a run from Vicuna: its tokenizer as is
    return model, tokenizer


def export_workdir(workdir: str | Path, out: str | Path, format: str = "merged") -> Path:
    """Merged llava-hf weights or a PEFT adapter of a run, with its tokenizer beside them. The model is restored
    fsdp-sharded over this host's devices (a 13B run's fp32 weights need not fit one device); tensors are
    gathered to the host one at a time as they are written."""
    from vlguard_jax.checkpoints.peft import export_merged, export_peft
    from vlguard_jax.checkpoints.tokenizer import save_tokenizer

    workdir, out = storage.path(workdir), storage.path(out)
    model, config = load_trained(workdir, mesh=make_mesh(fsdp=jax.local_device_count(), devices=jax.local_devices()))
    if format == "peft":
        if config.train.mode != "lora":
            raise ValueError("a PEFT adapter needs a LoRA run (train.mode: lora); export merged weights instead")
        if model.config.layout == "minigpt_v2":  # no transformers model to adapt; its base holds the folded LoRA
            raise ValueError("a PEFT adapter adapts a transformers model, which MiniGPT-v2 is not (and its base "
                             "weights hold MiniGPT-v2's own LoRA folded in); export merged weights instead")
        lora = config.train.lora
        export_peft(model, out, alpha=lora.alpha, dropout=lora.dropout, rslora=lora.rslora,
                    base_model=config.model.path, projector=True)
    elif format == "merged":
        export_merged(model, out)
    else:
        raise ValueError(f"unknown export format {format!r} (merged or peft)")
    save_tokenizer(load_tokenizer(config, tokenizer_dir(config, workdir)), out)  # with the run's <image> and pad
    return out
