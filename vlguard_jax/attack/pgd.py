"""One PGD step on the image's pixels, jitted: the attack loss, its gradient with respect to the pixels alone, a
signed step and the projection (Qi et al.'s `attack_constrained` / `attack_unconstrained`).

The loss is the mean negative log-likelihood of a minibatch of target sentences, each after the prompt that holds
the image (every row sees the one image: it is encoded once and its features spliced into each row). The model's
weights are inputs of the step, not parameters of it: they stay frozen in the compute dtype, and only the fp32
pixels receive a gradient. On a mesh the target rows split along data × fsdp as a training batch does; the image
and its update are replicated.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlguard_jax.train.step import chunked_cross_entropy_sums


@dataclasses.dataclass(frozen=True)
class Budget:
    """`epsilon`: the L∞ radius around the initial image in [0, 1] units (None: unconstrained, any pixel in
    [0, 1]); `alpha`: the signed step's size."""

    epsilon: float | None
    alpha: float

    def __post_init__(self):
        if self.epsilon is not None and not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1] (e.g. 16/255) or unconstrained, got {self.epsilon}")
        if not self.alpha > 0:
            raise ValueError(f"the step size alpha must be positive, got {self.alpha}")

    def start(self, origin: np.ndarray, seed: int) -> np.ndarray:
        """The first iterate: constrained, the origin plus uniform noise in [-ε, ε] (clipped to [0, 1]), as
        upstream starts; unconstrained, the origin itself (give `--image noise` for upstream's random start)."""
        if self.epsilon is None:
            return origin
        noise = np.random.default_rng(seed).uniform(-self.epsilon, self.epsilon, origin.shape).astype(np.float32)
        return np.clip(origin + noise, 0, 1)

    def project(self, pixels: jax.Array, origin: jax.Array) -> jax.Array:
        if self.epsilon is not None:
            pixels = jnp.clip(pixels, origin - self.epsilon, origin + self.epsilon)
        return jnp.clip(pixels, 0, 1)

    @property
    def label(self) -> str:
        if self.epsilon is None:
            return "unconstrained"
        levels = self.epsilon * 255
        return f"{round(levels)}/255" if math.isclose(levels, round(levels), abs_tol=1e-6) else f"{self.epsilon:g}"


def parse_epsilon(text: str) -> float | None:
    """`16/255`, `0.0627` or `unconstrained` → the radius in [0, 1] units (None: unconstrained)."""
    if text == "unconstrained":
        return None
    try:
        numerator, _, denominator = text.partition("/")
        return float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"epsilon {text!r}: give a fraction such as 16/255, a number in (0, 1] or "
                         f"'unconstrained'") from None


def attack_sums(model, pixels: jax.Array, batch: dict, mean: jax.Array, std: jax.Array,
                loss_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """The NLL summed over the batch's target tokens given `pixels` [3, H, W] in [0, 1], and their count."""
    normalized = (pixels - mean[:, None, None]) / std[:, None, None]
    rows = batch["input_ids"].shape[0]
    hidden, _ = model.hidden_states(batch["input_ids"], normalized[None], batch["attention_mask"], row_images=True,
                                    rows_per_image=rows, padding="right")
    return chunked_cross_entropy_sums(hidden, batch["labels"], model.language_model.logits, loss_chunk)


def attack_loss(model, pixels: jax.Array, batch: dict, mean: jax.Array, std: jax.Array,
                loss_chunk: int = 0) -> jax.Array:
    """The attack's objective: the mean NLL per target token (HF's `labels` loss over the batch, as upstream's)."""
    nll, count = attack_sums(model, pixels, batch, mean, std, loss_chunk)
    return nll / jnp.maximum(count, 1)


def make_step(graphdef: nnx.GraphDef, budget: Budget, mean, std, loss_chunk: int = 0):
    """`step(weights, pixels, origin, batch) -> (next pixels, loss at pixels)`; jit it on the caller's mesh."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def step(weights, pixels, origin, batch):
        model = nnx.merge(graphdef, weights)
        loss, grad = jax.value_and_grad(lambda p: attack_loss(model, p, batch, mean, std, loss_chunk))(pixels)
        return budget.project(pixels - budget.alpha * jnp.sign(grad), origin), loss

    return step


def make_sums(graphdef: nnx.GraphDef, mean, std, loss_chunk: int = 0):
    """`sums(weights, pixels, batch) -> (NLL sum, target tokens)`: the loss over a whole corpus, a batch at a time."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return lambda weights, pixels, batch: attack_sums(nnx.merge(graphdef, weights), pixels, batch, mean, std,
                                                      loss_chunk)
