"""`vlguard-jax attack`'s loop: PGD steps on a mesh, resumable, with the loss curve and the saved image.

OUT holds `attack.json` (the settings: a re-run with others is refused, so one directory never mixes two attacks),
`checkpoints/` (Orbax: the current pixels, every `save_every` steps and at the end; a killed attack re-run with the
same command resumes from the newest, and as the minibatches are a function of the step it ends with the image an
uninterrupted run ends with), `metrics.jsonl` + `tensorboard/` + `loss.png`, `adversarial.png` (the 8-bit image,
rewritten at each save) and `result.json`: the corpus loss of the initial image, of the attacked pixels and of
their 8-bit PNG (what the quantisation costs), the largest change in 8-bit levels, and the wall seconds per step
(the first step's compile included: `bench` times the step alone).

Every process runs the same loop on the same host inputs (the corpus, the draw, the start); each device computes
its own target rows; process 0 alone writes files other than the checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vlguard_jax import hosts, storage
from vlguard_jax.attack.corpus import Targets, read_corpus
from vlguard_jax.attack.image import NOISE, initial_image, quantize, save_png, unit_pixels
from vlguard_jax.attack.pgd import Budget, make_step, make_sums
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.evaluate import fingerprint
from vlguard_jax.evaluate.protocols import Protocol
from vlguard_jax.parallel import check_rows, place_replicated, place_rows
from vlguard_jax.train.metrics_log import MetricsLog, plot_loss

SETTINGS = "attack.json"
WRITTEN = ("checkpoints", "tensorboard", "metrics.jsonl", "loss.png", "adversarial.png", "result.json", SETTINGS)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    corpus: str  # CSV or JSONL of target sentences (`corpus.read_corpus`)
    budget: Budget
    image: str = NOISE  # the initial image's file, or `noise`
    steps: int = 5000
    batch: int = 8  # targets per step (upstream: 8)
    prompt: str = ""  # text beside the image in the user turn (upstream: none)
    seed: int = 0
    max_target_tokens: int = 128
    save_every: int = 100
    log_every: int = 10
    loss_chunk: int = 0  # > 0: the vocabulary projection that many positions at a time


def settings(model: str | Path, config: AttackConfig, protocol: Protocol, dtype: str) -> dict:
    """What `attack.json` records: what changes the image (not `steps`: a longer attack continues a shorter one)."""
    noise = config.image == NOISE
    return {
        "model": fingerprint.resolved(model), "model_identity": fingerprint.model_identity(model),
        "corpus": fingerprint.resolved(config.corpus), "corpus_sha256": fingerprint.sha256(config.corpus)[:16],
        "image": config.image if noise else fingerprint.resolved(config.image),
        "image_sha256": None if noise else fingerprint.sha256(config.image)[:16],
        "epsilon": config.budget.label, "alpha": config.budget.alpha, "batch": config.batch, "prompt": config.prompt,
        "seed": config.seed, "max_target_tokens": config.max_target_tokens, "template": protocol.template,
        "image_mode": protocol.image_mode, "dtype": dtype,
    }


def run_attack(model, tokenizer, config: AttackConfig, out: storage.PathLike, protocol: Protocol, mesh,
               record: dict, overwrite: bool = False, progress: bool = True) -> dict:
    """Attacks `model` (on `mesh`) into OUT; returns `result.json`'s content. `record`: `settings(...)`."""
    out = storage.path(out)
    vision = _vision(model, protocol)
    chat = ChatTokenizer(tokenizer, protocol.template, model.config.num_image_tokens, max_length=2**31 - 1)
    targets = Targets.build(read_corpus(config.corpus), chat, config.prompt, model.config.num_image_tokens,
                            config.max_target_tokens)
    check_rows(config.batch, mesh)
    if overwrite:
        hosts.decide(lambda: _clear(out))
    hosts.decide(lambda: fingerprint.claim(out, record, SETTINGS, "an attack"))
    origin_levels = initial_image(config.image, vision.image, config.seed)
    origin = unit_pixels(origin_levels)

    graphdef, weights = nnx.split(model)
    replicated = NamedSharding(mesh, PartitionSpec())
    with jax.set_mesh(mesh):
        step = jax.jit(make_step(graphdef, config.budget, vision.image.mean, vision.image.std, config.loss_chunk),
                       out_shardings=(replicated, replicated), donate_argnums=1)
        sums = jax.jit(make_sums(graphdef, vision.image.mean, vision.image.std, config.loss_chunk))
        origin_device = place_replicated(origin, mesh)
        corpus_loss = lambda pixels: _corpus_loss(sums, weights, place_replicated(pixels, mesh), targets,
                                                  config.batch, mesh)
        manager = _checkpoints(out)
        start = manager.latest_step() or 0
        pixels = (place_replicated(config.budget.start(origin, config.seed), mesh) if start == 0
                  else _restore(manager, start, replicated, origin.shape))
        leader = jax.process_index() == 0
        log = MetricsLog(out, start) if leader else None
        losses, began = [], time.perf_counter()
        for t in range(start, config.steps):
            rows = targets.rows(targets.draw(t, config.seed, config.batch))
            batch = {k: place_rows(v, mesh) for k, v in rows.items()}
            pixels, loss = step(weights, pixels, origin_device, batch)
            losses.append((t + 1, loss))
            done = t + 1 == config.steps
            logging, saving = (t + 1) % config.log_every == 0 or done, (t + 1) % config.save_every == 0 or done
            if logging or saving:  # the log catches up before each checkpoint: a resumed attack skips no step's loss
                for logged_step, logged in losses:  # fetched only now: the steps before ran without waiting
                    if leader:
                        log.write({"step": logged_step, "loss": float(_host(logged))})
                losses = []
            if logging and progress and leader:
                print(f"step {t + 1}/{config.steps}: loss {float(_host(loss)):.4f}", flush=True)
            if saving:
                _save(manager, t + 1, pixels)
                if leader:
                    save_png(out / "adversarial.png", quantize(_host(pixels), origin_levels,
                                                               config.budget.epsilon))
        manager.wait_until_finished()
        manager.close()
        seconds = (time.perf_counter() - began) / max(config.steps - start, 1)
        final = _host(pixels)
        levels = quantize(final, origin_levels, config.budget.epsilon)
        result = {"steps": config.steps, "epsilon": config.budget.label, "targets": len(targets),
                  "targets_truncated": targets.truncated,
                  "loss_initial_image": corpus_loss(origin), "loss_attacked": corpus_loss(final),
                  "loss_attacked_8bit": corpus_loss(unit_pixels(levels)),
                  "max_level_change": int(np.abs(levels.astype(int) - origin_levels.astype(int)).max()),
                  "seconds_per_step": seconds if start < config.steps else None}
    if leader:
        log.close()
        save_png(out / "adversarial.png", levels)
        storage.write_json(out / "result.json", result)
        plot_loss(out)
    return result


def _vision(model, protocol: Protocol) -> VisionInputs:
    config = model.config
    if config.vision is None:
        raise ValueError("the model is text-only (no vision tower): there is no image to attack")
    if config.anyres:
        raise ValueError(f"a {config.model_type} model tiles each image at its own resolution; the attack moves "
                         f"fixed-resolution pixels (LLaVA-1.5, MiniGPT-v2)")
    return VisionInputs.of(config, protocol.image_mode)


def _corpus_loss(sums, weights, pixels, targets: Targets, rows: int, mesh) -> float:
    """Mean NLL per target token over the whole corpus, a minibatch at a time."""
    nll, count = 0.0, 0
    for indices in targets.passes(rows):
        batch = {k: place_rows(v, mesh) for k, v in targets.rows(indices).items()}
        part_nll, part_count = sums(weights, pixels, batch)
        nll, count = nll + float(_host(part_nll)), count + int(_host(part_count))
    return nll / max(count, 1)


def _host(array: jax.Array) -> np.ndarray:
    """A replicated array's value on this process (its devices all hold it; a multi-host array is not whole here)."""
    return np.asarray(array.addressable_data(0))


def _checkpoints(out: storage.Path) -> ocp.CheckpointManager:
    directory = out / "checkpoints"
    return ocp.CheckpointManager(directory.absolute() if storage.is_local(directory) else directory,
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
                                 item_names=("pixels", "meta"))


def _save(manager: ocp.CheckpointManager, step: int, pixels: jax.Array) -> None:
    manager.save(step, args=ocp.args.Composite(pixels=ocp.args.StandardSave({"pixels": pixels}),
                                               meta=ocp.args.JsonSave({"step": step})), force=True)


def _restore(manager: ocp.CheckpointManager, step: int, sharding, shape) -> jax.Array:
    target = {"pixels": jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding)}
    return manager.restore(step, args=ocp.args.Composite(pixels=ocp.args.StandardRestore(target))).pixels["pixels"]


def _clear(out: storage.Path) -> None:
    """`--overwrite`: removes what an attack wrote (only that: OUT may hold other things)."""
    import shutil

    for name in WRITTEN:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path) if storage.is_local(path) else path.rmtree()
        else:
            path.unlink(missing_ok=True)
