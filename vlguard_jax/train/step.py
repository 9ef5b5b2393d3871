"""The training step: the objective's loss over the global batch, gradients of the trainable State only.

The global batch is split into `accum_steps` micro-batches scanned on device (each device splits its own rows:
`split_micro_batches`). Each micro-batch returns its loss summed over its units (supervised tokens for SFT's
masked cross-entropy, pairs for a preference loss: `train.preference`) with their count; losses, gradients and
metrics are summed and divided once by the count of the whole global batch, so accumulation gives exactly the mean
of one large batch. A non-finite loss or gradient skips the update and is counted.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlguard_jax.data.chat import IGNORE
from vlguard_jax.models.tiles import images_of
from vlguard_jax.parallel import constrain

LossSums = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]
# (params, weights, micro-batch, dropout key) -> (loss summed over the units, {"count": units, "tokens": supervised
# tokens, other metrics summed over the units}); its `sums` attribute names each sum's dtype (the scan's carry)
COUNTS = {"count": jnp.int32, "tokens": jnp.int32}


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any  # pure dict of the trainable parameters (fp32)
    opt_state: Any
    rng: jax.Array
    nonfinite_steps: jax.Array  # how many updates were skipped for a non-finite loss or gradient


def cross_entropy_sums(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of next-token NLL over supervised positions, and their count (fp32 log-softmax)."""
    nll, count = _nll_sums(logits[:, :-1], labels[:, 1:])
    return jnp.sum(nll), jnp.sum(count)


def _nll_sums(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: the NLL summed over its supervised positions, and their count."""
    valid = targets != IGNORE
    nll = _token_nll(logits.astype(jnp.float32), jnp.where(valid, targets, 0))
    return jnp.sum(nll * valid, axis=-1), jnp.sum(valid, axis=-1)


@jax.custom_vjp
def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`logsumexp(logits) - logits[target]` per position. Its gradient is written as `softmax - one_hot`, one
    elementwise pass: autodiff of the target lookup would scatter into a zeroed `[rows, len, vocab]` buffer."""
    return _token_nll_fwd(logits, targets)[0]


def _token_nll_fwd(logits, targets):
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - picked, (logits, targets, log_z)


def _token_nll_bwd(residuals, grad):
    logits, targets, log_z = residuals
    one_hot = jnp.arange(logits.shape[-1]) == targets[..., None]
    return grad[..., None] * (jnp.exp(logits - log_z[..., None]) - one_hot), None


_token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


def chunked_cross_entropy_sums(hidden: jax.Array, labels: jax.Array, project: Callable, chunk: int):
    """`cross_entropy_sums` of `project(hidden)` computed `chunk` positions at a time, each chunk rematerialised
    in the backward pass: fp32 logits never exist for the whole `[batch, len, vocab]` at once."""
    nll, count = row_cross_entropy_sums(hidden, labels, project, chunk)
    return jnp.sum(nll), jnp.sum(count)


def row_cross_entropy_sums(hidden: jax.Array, labels: jax.Array, project: Callable, chunk: int):
    """Per row of `hidden`: `chunked_cross_entropy_sums`' NLL sum and supervised-token count (a sequence's
    log-probability is minus its sum)."""
    hidden, targets = hidden[:, :-1], labels[:, 1:]
    length = hidden.shape[1]
    if chunk <= 0 or chunk >= length:
        return _nll_sums(project(hidden), targets)
    pad = -length % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE)
    batch, d = hidden.shape[0], hidden.shape[-1]
    h_chunks = hidden.reshape(batch, -1, chunk, d).swapaxes(0, 1)
    t_chunks = targets.reshape(batch, -1, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def body(carry, xs):
        h, t = xs  # keep each chunk split by rows as the batch is: else its logits are gathered whole
        logits = constrain(project(constrain(h, ("batch", "length", "act_embed"))), ("batch", "length", "vocab"))
        nll, count = _nll_sums(logits, t)
        return (carry[0] + nll, carry[1] + count), None

    zeros = (jnp.zeros(batch, jnp.float32), jnp.zeros(batch, jnp.int32))
    (nll, count), _ = jax.lax.scan(body, zeros, (h_chunks, t_chunks))
    return nll, count


def split_micro_batches(batch: dict, accum_steps: int) -> dict:
    """`[rows, ...]` → `[accum_steps, rows / accum_steps, ...]`, micro-batch i holding rows i, i + accum_steps, ….

    Each device's contiguous block of rows then splits in place and no row moves between devices. (Micro-batch i
    as the i-th contiguous block would live on a few devices only: the partitioner all-gathered the batch and
    permuted activations in every micro-step.) Needs the rows per device to divide by `accum_steps`."""
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1 if mesh.empty else mesh.shape["data"] * mesh.shape["fsdp"]
    rows = jax.tree.leaves(batch)[0].shape[0]
    if rows % (shards * accum_steps):
        raise ValueError(f"{rows} rows over data × fsdp = {shards} devices give {rows / shards:g} rows per device, "
                         f"which do not split into accum_steps = {accum_steps} micro-batches")
    split = lambda x: constrain(x.reshape(-1, accum_steps, *x.shape[1:]).swapaxes(0, 1), (None, "batch"))
    return jax.tree.map(split, batch)


def merge_params(graphdef: nnx.GraphDef, template: nnx.State, params, frozen: nnx.State) -> nnx.Module:
    """Rebuilds the model from pure trainable params (without mutating the template)."""
    trainable = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(trainable, params)
    return nnx.merge(graphdef, trainable, frozen)


def sft_loss_sums(graphdef: nnx.GraphDef, template: nnx.State, dropout: bool = True, loss_chunk: int = 0) -> LossSums:
    """Masked next-token cross-entropy, its unit the supervised token. `loss_chunk` > 0 computes it that many
    positions at a time (see `chunked_cross_entropy_sums`)."""

    def loss_sums(params, frozen, micro, key):
        model = merge_params(graphdef, template, params, frozen)
        hidden, _ = model.hidden_states(micro["input_ids"], images_of(micro), micro["attention_mask"],
                                        dropout_key=key if dropout else None, row_images=True,
                                        padding="right")  # the pipeline pads rows on the right
        nll, tokens = chunked_cross_entropy_sums(hidden, micro["labels"], model.language_model.logits, loss_chunk)
        return nll, {"count": tokens, "tokens": tokens}

    loss_sums.sums = COUNTS
    return loss_sums


def make_train_step(graphdef: nnx.GraphDef, template: nnx.State, tx: optax.GradientTransformation,
                    accum_steps: int = 1, dropout: bool = True, loss_chunk: int = 0,
                    loss_sums: LossSums | None = None) -> Callable:
    """`step(state, weights, batch) -> (state, metrics)`; jit it with the shardings of the caller's mesh.

    `loss_sums` is the objective (default: `sft_loss_sums`, whose `weights` are the frozen State); its metrics,
    summed over the global batch's units and divided by their count, come back beside the loss."""
    loss_sums = loss_sums or sft_loss_sums(graphdef, template, dropout, loss_chunk)
    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def step(state: TrainState, weights, batch: dict) -> tuple[TrainState, dict]:
        rng, step_key = jax.random.split(state.rng)
        micro_batches = split_micro_batches(batch, accum_steps)

        def accumulate(carry, inputs):
            micro, key = inputs
            (loss_sum, sums), grads = grad_fn(state.params, weights, micro, key)
            grad_acc, loss_acc, sums_acc = carry
            return (jax.tree.map(jnp.add, grad_acc, grads), loss_acc + loss_sum,
                    jax.tree.map(jnp.add, sums_acc, sums)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        keys = jax.random.split(step_key, accum_steps)
        no_sums = {name: jnp.zeros((), dtype) for name, dtype in loss_sums.sums.items()}
        (grads, loss_sum, sums), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), no_sums), (micro_batches, keys))
        denominator = jnp.maximum(sums["count"], 1)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        loss = loss_sum / denominator
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(step=state.step + finite.astype(state.step.dtype),
                                  params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                                  rng=rng, nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
        means = {k: v / denominator for k, v in sums.items() if k not in ("count", "tokens")}
        return new_state, {"loss": loss, "grad_norm": grad_norm, "tokens": sums["tokens"], "finite": finite, **means}

    return step


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key(seed), nonfinite_steps=jnp.zeros((), jnp.int32))


def state_shardings(params, tx: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
    """Shardings of `init_state(params)`: optimizer moments take their parameter's sharding, scalars are
    replicated. (Left to XLA, the moments come out replicated: `zeros_like` does not depend on the sharded
    input, so every device would hold the whole optimizer state.)

    `params` are arrays or `ShapeDtypeStruct`s that carry their `sharding`; a moment is matched to the
    parameter whose key path ends its own and whose shape it has."""
    by_path = {tuple(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding(path, leaf):
        for start in range(len(path)):
            param = by_path.get(tuple(path[start:]))
            if param is not None and param.shape == leaf.shape:
                return param.sharding
        return replicated

    abstract = jax.eval_shape(lambda p: init_state(p, tx, seed), params)
    return jax.tree_util.tree_map_with_path(sharding, abstract)
