"""The attack workload: one PGD step on an image's pixels (`vlguard-jax attack`'s jitted `attack.pgd` step) beside
the same step as Qi et al. write it in PyTorch (`theirs.attack_step`), on a random-weight model of a bench size.

Both sides take the same minibatch, laid out as `attack.corpus.Targets.rows` lays a corpus's out: `ROWS` rows of
one prompt (BOS, the image's tokens, text) then a target of `TARGET_TOKENS // 2`–`TARGET_TOKENS` random tokens,
supervised alone, right-padded; the same start pixels in [0, 1] and budget (ε = 16/255, α = 1/255). Each timed
call is one step from the pixels the last one left, waiting for the step's loss. The steps differ as the two
codes do: ours encodes the one image once for all rows; upstream repeats it over the rows, so its vision tower
runs `ROWS` times a step.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlguard_jax.attack.corpus import Targets
from vlguard_jax.attack.pgd import Budget, make_step
from vlguard_jax.bench.timing import alternate
from vlguard_jax.bench.workload import FIRST_TEXT_ID, prompt_ids
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models.config import LlavaConfig
from vlguard_jax.parallel import make_mesh

ROWS = 8  # upstream's batch_size
PROMPT_TEXT_TOKENS = 16  # the user turn's text around the image
TARGET_TOKENS = 32
BUDGET = Budget(16 / 255, 1 / 255)


def target_batch(llava: LlavaConfig, rows: int = ROWS, target_tokens: int = TARGET_TOKENS,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """`input_ids`, `labels`, `attention_mask` of one step's minibatch (the first row's target the longest)."""
    prompt = prompt_ids(llava, 1, 1 + llava.num_image_tokens + PROMPT_TEXT_TOKENS, seed)[0]
    rng = np.random.RandomState(seed + 2)
    lengths = rng.randint(target_tokens // 2, target_tokens + 1, rows).astype(np.int32)
    lengths[0] = target_tokens
    ids = rng.randint(FIRST_TEXT_ID, min(llava.image_token_id, llava.text.vocab_size), (rows, target_tokens))
    ids = np.where(np.arange(target_tokens) < lengths[:, None], ids, 0).astype(np.int32)
    return Targets(prompt, ids, lengths, truncated=0).rows(np.arange(rows))


def pixels(llava: LlavaConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The origin `[3, S, S]` in [0, 1] and the first iterate (`BUDGET.start`: origin + uniform noise in ±ε)."""
    size = llava.vision.image_size
    origin = np.random.RandomState(seed + 1).rand(3, size, size).astype(np.float32)
    return origin, BUDGET.start(origin, seed)


def normalization(llava: LlavaConfig) -> tuple[np.ndarray, np.ndarray]:
    """The processor's mean and std for the model's tower (CLIP's for LLaVA), as `vlguard-jax attack` takes them."""
    image = VisionInputs.of(llava).image
    return np.asarray(image.mean, np.float32), np.asarray(image.std, np.float32)


def ours_step(model, batch: dict[str, np.ndarray], origin: np.ndarray,
              start: np.ndarray) -> tuple[Callable[[], float], float]:
    """A warmed-up `run()` doing one PGD step on a one-device mesh (as `attack.run` does it), carrying the pixels
    to the next call and returning the step's loss; and the seconds compiling took."""
    mesh = make_mesh(devices=jax.devices()[:1])
    mean, std = normalization(model.config)
    graphdef, weights = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    origin, holder = jnp.asarray(origin), [jnp.asarray(start)]
    with jax.set_mesh(mesh):
        began = time.perf_counter()
        compiled = jax.jit(make_step(graphdef, BUDGET, mean, std), donate_argnums=1).lower(
            weights, holder[0], origin, batch).compile()
        compile_s = time.perf_counter() - began

    def run() -> float:
        holder[0], loss = compiled(weights, holder[0], origin, batch)
        holder[0].block_until_ready()
        return float(loss)

    return run, compile_s


def measure(size, dtype, torch_side, repeats: int) -> dict:
    """The figures of `results["sizes"][name]["attack_step"]`. `torch_side`: the `theirs` module, or None."""
    from vlguard_jax.bench.ours import run_config
    from vlguard_jax.train.setup import make_model

    batch = target_batch(size.model)
    origin, start = pixels(size.model)
    run_ours, compile_s = ours_step(make_model(size.model, run_config(size, "full", dtype)), batch, origin, start)
    run_ours()
    run_theirs = None
    if torch_side is not None:
        run_theirs = torch_side.attack_step(torch_side.build(size), batch, origin, start, BUDGET,
                                            *normalization(size.model))
        run_theirs()
    ours_s, theirs_s = alternate(run_ours, run_theirs, repeats)
    result = {"rows": ROWS, "seq_len": int(batch["input_ids"].shape[1]),
              "target_tokens": int((batch["labels"] >= 0).sum()), "image_size": size.model.vision.image_size,
              "epsilon": BUDGET.label, "alpha": BUDGET.alpha, "step_s": ours_s, "compile_s": compile_s}
    if theirs_s is not None:
        result["torch"] = {"step_s": theirs_s}
        result["ratio_vs_torch"] = theirs_s / ours_s
    return result
