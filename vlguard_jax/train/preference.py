"""Preference objectives (`train.objective: dpo | ipo`): the policy against a frozen reference on (chosen, rejected)
pairs, as TRL's `DPOTrainer` computes them.

A pair batch holds `input_ids`, `labels`, `attention_mask` of shape `[pairs, 2, len]` (side 0 the chosen answer,
side 1 the rejected one, the prompt tokens masked in both) and one image per pair, `pixel_values[pairs]` (with
`image_index` / `image_weight[pairs]` for an any-resolution model: `models.tiles.images_of`). Both sides
go through one forward as `2 × pairs` rows, the pair's image encoded once and spliced into both. A sequence's
log-probability is the sum over its supervised tokens (IPO: their mean, as TRL's `ipo` loss takes it). With
`rpo_alpha` (RPO), each pair's loss adds α × its chosen answer's token-mean NLL (TRL averages that NLL over the
batch's chosen tokens instead: the same when the chosen answers are equally long).

The reference is the model the run starts from, without a second copy of the frozen weights: the same frozen State
with the adapters removed (LoRA), and the initial values of the other trainable weights (the projector under LoRA,
every trained weight under full fine-tuning) held frozen in the compute dtype (`reference_params`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from vlguard_jax.models.lora import remove_adapters
from vlguard_jax.models.tiles import images_of
from vlguard_jax.train.step import COUNTS, LossSums, merge_params, row_cross_entropy_sums

OBJECTIVES = ("sft", "dpo", "ipo")
REFERENCES = ("model", "precomputed")
PREFERENCE_SUMS = ("nll_chosen", "reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin", "logp_chosen",
                   "logp_rejected")  # the step's metrics, each a mean over the global batch's pairs


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
    objective: str  # dpo (sigmoid; cDPO with label_smoothing) or ipo
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference: str = "model"  # or precomputed: the batch carries `reference_logps` (`train.reference_pass`)
    rpo_alpha: float = 0.0  # > 0: + α × the chosen answer's token-mean NLL per pair (RPO)

    def __post_init__(self):
        if self.objective not in OBJECTIVES[1:]:
            raise ValueError(f"a preference objective is one of {', '.join(OBJECTIVES[1:])}, got {self.objective!r}")
        if self.beta <= 0:
            raise ValueError(f"train.preference.beta must be positive, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"train.preference.label_smoothing must lie in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.objective != "dpo":
            raise ValueError("train.preference.label_smoothing (cDPO) applies to the dpo objective only")
        if self.rpo_alpha < 0:
            raise ValueError(f"train.preference.rpo_alpha must be at least 0, got {self.rpo_alpha}")
        if self.reference not in REFERENCES:
            raise ValueError(f"train.preference.reference must be one of {', '.join(REFERENCES)}, got "
                             f"{self.reference!r}")

    @property
    def mean(self) -> bool:
        """Whether a sequence's log-probability is its tokens' mean (IPO, as TRL takes it) rather than their sum."""
        return self.objective == "ipo"

    def losses(self, policy: jax.Array, reference: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per pair: the loss and the (chosen, rejected) implicit rewards `β·(policy − reference)`, from
        `[pairs, 2]` sequence log-probabilities."""
        rewards = self.beta * (policy - reference)
        logits = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
        if self.objective == "ipo":
            return (logits - 1 / (2 * self.beta)) ** 2, rewards
        smoothing = self.label_smoothing
        loss = (-jax.nn.log_sigmoid(self.beta * logits) * (1 - smoothing)
                - jax.nn.log_sigmoid(-self.beta * logits) * smoothing)
        return loss, rewards


def sequence_logps(model, batch: dict, key: jax.Array | None, loss_chunk: int, mean: bool):
    """`[pairs, 2]` log-probabilities of each side's supervised tokens (summed, or their mean) and their counts."""
    pairs, sides, length = batch["input_ids"].shape
    rows = lambda x: x.reshape(pairs * sides, length)
    hidden, _ = model.hidden_states(rows(batch["input_ids"]), images_of(batch), rows(batch["attention_mask"]),
                                    dropout_key=key, row_images=True, rows_per_image=sides, padding="right")
    nll, count = row_cross_entropy_sums(hidden, rows(batch["labels"]), model.language_model.logits, loss_chunk)
    logps = -nll / jnp.maximum(count, 1) if mean else -nll
    return logps.reshape(pairs, sides), count.reshape(pairs, sides)


def base_logps(graphdef: nnx.GraphDef, template: nnx.State, frozen: nnx.State, reference: dict, batch: dict,
               loss: PreferenceLoss, loss_chunk: int = 0) -> jax.Array:
    """`[pairs, 2]` log-probabilities under the reference: the frozen State with the adapters removed and the other
    trainable weights at their start (`reference_params`)."""
    base = merge_params(graphdef, template, reference, frozen)  # adapters still abstract: removed unread
    remove_adapters(base)
    return sequence_logps(base, batch, None, loss_chunk, loss.mean)[0]


def preference_loss_sums(graphdef: nnx.GraphDef, template: nnx.State, loss: PreferenceLoss, dropout: bool = True,
                         loss_chunk: int = 0) -> LossSums:
    """The step's objective over pairs; its `weights` are `(frozen State, reference_params)` (a precomputed
    reference: the batch's `reference_logps`, and no reference weights). A pair counts when both sides have
    supervised tokens (a row whose image failed to load has none)."""

    def loss_sums(params, weights, micro, key):
        frozen, reference = weights
        policy = merge_params(graphdef, template, params, frozen)
        logps, count = sequence_logps(policy, micro, key if dropout else None, loss_chunk, loss.mean)
        if loss.reference == "precomputed":
            reference_logps = micro["reference_logps"]
        else:
            reference_logps = base_logps(graphdef, template, frozen, reference, micro, loss, loss_chunk)
        reference_logps = jax.lax.stop_gradient(reference_logps)
        losses, rewards = loss.losses(logps, reference_logps)
        chosen_nll = -logps[:, 0] if loss.mean else -logps[:, 0] / jnp.maximum(count[:, 0], 1)  # token mean
        if loss.rpo_alpha:
            losses = losses + loss.rpo_alpha * chosen_nll
        valid = jnp.all(count > 0, axis=1)
        total = lambda x: jnp.sum(jnp.where(valid, x, 0))
        return total(losses), {
            "count": jnp.sum(valid), "tokens": jnp.sum(count), "nll_chosen": total(chosen_nll),
            "reward_accuracy": total(ranked_right(logps, reference_logps).astype(jnp.float32)),
            "reward_chosen": total(rewards[:, 0]), "reward_rejected": total(rewards[:, 1]),
            "reward_margin": total(rewards[:, 0] - rewards[:, 1]),
            "logp_chosen": total(logps[:, 0]), "logp_rejected": total(logps[:, 1])}

    loss_sums.sums = {**COUNTS, **{name: jnp.float32 for name in PREFERENCE_SUMS}}
    return loss_sums


def ranked_right(policy: jax.Array, reference: jax.Array) -> jax.Array:
    """Per pair: does the policy prefer the chosen answer more than the reference does? A difference within the
    float resolution of the four log-probabilities is a tie: at step 0 the policy and reference forwards are the same
    function compiled apart, and their rounding differs (~1e-6 of a 30-token sum in fp32), which is no preference."""
    margin = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    resolution = 16 * jnp.finfo(policy.dtype).eps * jnp.sum(jnp.abs(policy) + jnp.abs(reference), axis=1)
    return margin > resolution


def reference_params(template: nnx.State, params: dict, dtype) -> dict:
    """The reference's own weights: every trainable weight but the adapters, in the compute dtype (a pure dict
    shaped like `params`' part; arrays on their shardings, or `ShapeDtypeStruct`s for a plan). Fresh buffers: the
    caller may donate `params` afterwards."""
    lora = {tuple(map(str, path)) for path, v in nnx.to_flat_state(template) if isinstance(v, nnx.LoRAParam)}
    kept = unflatten_dict({path: v for path, v in flatten_dict(params).items()
                           if tuple(map(str, path)) not in lora})
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(kept)):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding), kept)
    cast = jax.jit(lambda tree: jax.tree.map(lambda x: x.astype(dtype), tree),
                   out_shardings=jax.tree.map(lambda x: x.sharding, kept))
    return cast(kept)
