"""The trained model of a workdir: the base rebuilt from its config, the newest checkpoint's params on top."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from vlguard_jax.config import Config, load_config
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.train.model_setup import build_model
from vlguard_jax.train.trainable import split_model


def tokenizer_dir(config: Config, workdir: Path) -> Path:
    if config.model.tokenizer:
        return Path(config.model.tokenizer)
    if config.data.synthetic:
        return workdir / "data" / "tokenizer"
    return Path(config.model.path)


def load_trained(workdir: str | Path, step: int | None = None) -> tuple[LlavaForConditionalGeneration, Config]:
    from transformers import AutoTokenizer

    workdir = Path(workdir)
    config = load_config(workdir / "config.yaml")
    model = build_model(config.model, config.train, AutoTokenizer.from_pretrained(tokenizer_dir(config, workdir)))
    manager = ocp.CheckpointManager((workdir / "checkpoints").absolute(), item_names=("state", "data", "meta"))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint; train first")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    graphdef, trainable, frozen = split_model(model, config.train.mode)
    params = restored.state["params"]
    # trained weights keep their fp32 (a bf16 base's projector would otherwise be rounded on export)
    trainable = nnx.from_flat_state([(path, var.replace(jnp.asarray(_get(params, path))))
                                     for path, var in nnx.to_flat_state(trainable)])
    return nnx.merge(graphdef, trainable, frozen), config


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key] if key in tree else tree[str(key)]
    return tree


def load_model_and_tokenizer(path: str | Path, dtype=jnp.float32):
    """A checkpoint directory (config.json + weights + tokenizer) or a training workdir (base + checkpoint)."""
    from transformers import AutoTokenizer

    from vlguard_jax.checkpoints.hf import load_pretrained

    path = Path(path)
    if (path / "config.yaml").exists() and (path / "checkpoints").exists():
        model, config = load_trained(path)
        return model, AutoTokenizer.from_pretrained(tokenizer_dir(config, path))
    return load_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def export_workdir(workdir: str | Path, out: str | Path, format: str = "merged") -> Path:
    """Merged llava-hf weights or a PEFT adapter of a run, with its tokenizer beside them."""
    import shutil

    from vlguard_jax.checkpoints.peft import export_merged, export_peft

    workdir, out = Path(workdir), Path(out)
    model, config = load_trained(workdir)
    if format == "peft":
        if config.train.mode != "lora":
            raise ValueError("a PEFT adapter needs a LoRA run (train.mode: lora); export merged weights instead")
        lora = config.train.lora
        export_peft(model, out, alpha=lora.alpha, dropout=lora.dropout, rslora=lora.rslora,
                    base_model=config.model.path, projector=True)
    elif format == "merged":
        export_merged(model, out)
    else:
        raise ValueError(f"unknown export format {format!r} (merged or peft)")
    source = tokenizer_dir(config, workdir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    return out
