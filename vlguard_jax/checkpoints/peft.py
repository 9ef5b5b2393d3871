"""Export LoRA runs: merged llava-hf weights, or a PEFT adapter directory for `peft.PeftModel.from_pretrained`.

The adapter's module names are the transformers v5 runtime names of `LlavaForConditionalGeneration` (of
`LlamaForCausalLM` for a text-only model); a trained projector goes into the adapter as a PEFT `modules_to_save`
entry, so loading the adapter restores it too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from flax import nnx

from vlguard_jax import storage
from vlguard_jax.checkpoints import names
from vlguard_jax.checkpoints.hf import save_pretrained
from vlguard_jax.checkpoints.tensors import write_sharded
from vlguard_jax.models.layers import Linear
from vlguard_jax.models.lora import merge_lora

_RUNTIME = (("language_model.model.", "model.language_model."), ("vision_tower.vision_model.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."), ("language_model.lm_head.", "lm_head."))


def runtime_name(canonical: str) -> str:
    """llava-hf on-disk name → transformers v5 module name (what PEFT sees)."""
    for old, new in _RUNTIME:
        if canonical.startswith(old):
            return new + canonical[len(old):]
    return canonical


def _module_regex(modules: set[str]) -> str:
    """One regex PEFT full-matches against module names: exactly the adapted modules, any layer index."""
    generic = {re.sub(r"\\\.layers\\\.\d+\\\.", r"\\.layers\\.\\d+\\.", re.escape(m)) for m in modules}
    return "(" + "|".join(sorted(generic)) + ")"


def export_merged(model: nnx.Module, out: str | Path) -> Path:
    """Folds the adapters into a copy of the weights and writes the llava-hf layout."""
    merged = nnx.clone(model)
    merge_lora(merged)
    return save_pretrained(merged, out)


def export_peft(model: nnx.Module, out: str | Path, *, alpha: float, dropout: float, rslora: bool,
                base_model: str | None, projector: bool) -> Path:
    out = storage.path(out)
    runtime = names.llama_name if model.config.vision is None else runtime_name  # LlamaForCausalLM's names
    projector = projector and model.multi_modal_projector is not None
    adapted = {".".join(map(str, p)): m for p, m in nnx.iter_graph(model)
               if isinstance(m, Linear) and m.lora_a is not None}
    if not adapted:
        raise ValueError("the model has no LoRA adapters: export merged weights instead")
    tensors, targets, rank = {}, set(), None
    for path, module in sorted(adapted.items()):
        a, b = np.asarray(module.lora_a[...]), np.asarray(module.lora_b[...])
        rank = a.shape[-1]
        layer_names = names.hf_names(path.split(".") + ["kernel"], a.shape[0] if a.ndim == 3 else None)
        for i, name in enumerate(layer_names):
            module_name = "base_model.model." + runtime(name)[: -len(".weight")]
            tensors[f"{module_name}.lora_A.weight"] = (a[i] if a.ndim == 3 else a).T
            tensors[f"{module_name}.lora_B.weight"] = (b[i] if b.ndim == 3 else b).T
        targets.update(runtime(n)[: -len(".weight")] for n in layer_names)
    if projector:
        for param_path, var in nnx.to_flat_state(nnx.state(model.multi_modal_projector, nnx.Param)):
            name = "multi_modal_projector." + ".".join(map(str, param_path))
            canonical = names.hf_names(name.split("."), None)[0]
            kind = names.param_path(canonical)[2]
            tensors["base_model.model." + runtime_name(canonical)] = names.to_torch(kind, np.asarray(var[...]))
    write_sharded(tensors.items(), out)
    storage.move(out / "model.safetensors", out / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "use_rslora": rslora,
              "target_modules": _module_regex(targets), "bias": "none", "task_type": None, "inference_mode": True,
              "base_model_name_or_path": base_model, "modules_to_save": ["multi_modal_projector"] if projector else None}
    storage.write_json(out / "adapter_config.json", config, indent=2)
    return out
