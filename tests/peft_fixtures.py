"""Adapters shared between our model and a PEFT model, and their comparison after a step."""

import jax.numpy as jnp
import numpy as np
import torch

MODULES = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _pairs(layers, peft_layers):
    """(ours, theirs, layer index) of every adapted projection; ours hold the layers stacked."""
    for block, names in MODULES.items():
        for name in names:
            ours = getattr(getattr(layers, block), name)
            for i, layer in enumerate(peft_layers):
                yield ours, getattr(getattr(layer, block), name), i


def share_adapters(layers, peft_layers, scale: float = 0.1) -> None:
    """PEFT's lora_B drawn non-zero (`torch.manual_seed` first), then both sides' adapters made equal: a policy
    that is not its base model."""
    stacks = {}
    for ours, theirs, _ in _pairs(layers, peft_layers):
        with torch.no_grad():
            theirs.lora_B["default"].weight.normal_(0, scale)
        a, b = stacks.setdefault(id(ours), (ours, [], []))[1:]
        a.append(theirs.lora_A["default"].weight.detach().numpy().T)
        b.append(theirs.lora_B["default"].weight.detach().numpy().T)
    for ours, a, b in stacks.values():
        ours.lora_a[...], ours.lora_b[...] = jnp.asarray(np.stack(a)), jnp.asarray(np.stack(b))


def assert_adapters_equal(layers, peft_layers, atol: float = 1e-5) -> None:
    for ours, theirs, i in _pairs(layers, peft_layers):
        for mine, their in ((ours.lora_a, theirs.lora_A), (ours.lora_b, theirs.lora_B)):
            np.testing.assert_allclose(np.asarray(mine[...][i]), their["default"].weight.detach().numpy().T,
                                       atol=atol)
