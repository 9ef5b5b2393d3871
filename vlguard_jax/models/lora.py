"""LoRA adapters as separate `nnx.LoRAParam`s on the `Linear` modules whose path matches a regex.

Adapters follow PEFT's conventions so they export to a PEFT adapter directory: `lora_a` is PEFT's `lora_A`
transposed (kaiming-uniform init), `lora_b` its `lora_B` transposed (zeros, so the adapted model starts equal to
the base), scale `alpha / r` (`alpha / sqrt(r)` with rsLoRA). Stacked layers get stacked adapters.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from vlguard_jax.models.layers import Linear

DEFAULT_TARGETS = r"language_model\.model\.layers\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    targets: str = DEFAULT_TARGETS  # regex, fully matched against dotted module paths
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def lora_modules(model: nnx.Module, targets: str) -> dict[str, Linear]:
    pattern = re.compile(targets)
    return {".".join(map(str, path)): node for path, node in nnx.iter_graph(model)
            if isinstance(node, Linear) and pattern.fullmatch(".".join(map(str, path)))}


def apply_lora(model: nnx.Module, config: LoraConfig, rngs: nnx.Rngs) -> list[str]:
    """Attaches fp32 adapters to every matching `Linear`; returns the adapted module paths."""
    modules = lora_modules(model, config.targets)
    if not modules:
        raise ValueError(f"LoRA targets {config.targets!r} match no Linear module of the model")
    for module in modules.values():
        kernel = module.kernel
        *lead, fan_in, fan_out = kernel.shape
        axes = kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim
        bound = 1.0 / math.sqrt(fan_in)  # PEFT: kaiming_uniform_(a=sqrt(5)) on lora_A
        a = jax.random.uniform(rngs.params(), (*lead, fan_in, config.rank), jnp.float32, -bound, bound)
        # FSDP shards each adapter once: along `embed` where the kernel has it, else along the rank.
        in_axis, out_axis = axes[-2], axes[-1]
        a_axes = (*axes[:-2], in_axis, None if in_axis == "embed" else "lora_rank")
        b_axes = (*axes[:-2], None if out_axis == "embed" else "lora_rank", out_axis)
        module.lora_a = nnx.LoRAParam(a, out_sharding=a_axes, eager_sharding=False)
        module.lora_b = nnx.LoRAParam(jnp.zeros((*lead, config.rank, fan_out), jnp.float32),
                                      out_sharding=b_axes, eager_sharding=False)
        module.lora_scale = config.scale
        module.lora_dropout = config.dropout
    return sorted(modules)


def merge_lora(model: nnx.Module) -> None:
    """Folds every adapter into its kernel (`kernel += scale · a @ b`) and removes it, in place."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, Linear) and module.lora_a is not None:
            delta = jnp.einsum("...ir,...ro->...io", module.lora_a[...], module.lora_b[...]) * module.lora_scale
            module.kernel[...] = (module.kernel[...].astype(jnp.float32) + delta).astype(module.kernel.dtype)
            module.lora_a = module.lora_b = None


def remove_adapters(model: nnx.Module) -> None:
    """Drops every adapter unread, in place: the base model the adapters were attached to (a preference run's
    reference, with no copy of the base weights)."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, Linear) and module.lora_a is not None:
            module.lora_a = module.lora_b = None
