"""`train(config, workdir)`: the whole fine-tuning run, resumable by re-running it with the same workdir.

Re-running restores the newest checkpoint (state and data iterator) and continues bit-for-bit; SIGTERM
(preemption) saves at the current step and returns; repeated non-finite steps stop the run with the last good
checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import yaml
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from vlguard_jax.config import Config, ConfigError, dump_config, to_dict
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.images import ImageConfig
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, prepare, steps_per_epoch
from vlguard_jax.data.recipes import synthetic_dataset, training_data
from vlguard_jax.parallel import logical_to_spec, make_mesh, variable_sharding
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.metrics_log import MetricsLog, plot_loss
from vlguard_jax.train.model_setup import build_model
from vlguard_jax.train.optimizer import build_optimizer, schedule
from vlguard_jax.train.step import init_state, make_train_step, state_shardings
from vlguard_jax.train.trainable import split_model

# Sections that must not change under an existing checkpoint (epochs / max_steps may, to extend a run).
PINNED = ("model", "data", "train.mode", "train.lora", "train.global_batch_size", "train.accum_steps", "train.seed")


class TrainingError(RuntimeError):
    pass


@dataclasses.dataclass
class RunResult:
    steps: int  # batches consumed so far
    total_steps: int
    status: str  # "finished", "preempted"
    workdir: Path


def mesh_for(config: Config) -> jax.sharding.Mesh:
    m = config.mesh
    count = jax.device_count()
    fsdp = m.fsdp if m.fsdp != -1 else count // (m.data * m.tensor)
    return make_mesh(m.data, fsdp, m.tensor)


def check_workdir(config: Config, workdir: Path) -> None:
    """A workdir's checkpoint must belong to the same model and data: says which fields differ."""
    saved_path = workdir / "config.yaml"
    if not saved_path.exists():
        return
    saved, current = _flatten(yaml.safe_load(saved_path.read_text())), _flatten(_plain(to_dict(config)))
    differ = [k for k in sorted(set(saved) | set(current)) if k.startswith(PINNED) and saved.get(k) != current.get(k)]
    if differ:
        details = "; ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in differ[:8])
        raise ConfigError(f"{workdir} holds a run of a different configuration ({details}); use a new --workdir "
                          f"or the original config")


def _plain(value):
    return json.loads(json.dumps(value))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def train(config: Config, workdir: str | Path, progress: bool = True) -> RunResult:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(config, workdir)
    mesh = mesh_for(config)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    t = config.train
    if t.global_batch_size % t.accum_steps or (t.global_batch_size // t.accum_steps) % batch_shards:
        raise ConfigError(f"train.global_batch_size {t.global_batch_size} / accum_steps {t.accum_steps} must divide "
                          f"over data × fsdp = {batch_shards} devices")
    primary = jax.process_index() == 0  # one writer of run files; every host reads the same data
    if primary:
        dump_config(config, workdir / "config.yaml")
        if config.data.synthetic:
            synthetic_dataset(config.data, workdir)
    multihost_utils.sync_global_devices("vlguard-jax: run files ready")
    data = training_data(config.data, workdir)
    if primary:
        data.mix.write_manifest(workdir / "mixture.json")
    from transformers import AutoTokenizer

    tokenizer_dir = config.model.tokenizer or data.tokenizer_dir or config.model.path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(config.model, t, tokenizer)
    chat = ChatTokenizer(tokenizer, config.data.template, model.config.num_image_tokens,
                         config.data.max_length, config.data.truncation)
    samples, sample_skips = prepare(data.mix.conversations, chat)
    skips = data.skips + sample_skips
    if primary:
        (workdir / "skips.json").write_text(json.dumps([dataclasses.asdict(s) for s in skips], indent=1))
        print(f"{len(samples)} training samples; {len(skips)} skipped (reasons in {workdir / 'skips.json'})")
    total = len(samples) + len(sample_skips)
    if total and len(sample_skips) / total > config.data.max_skip_fraction:
        raise TrainingError(f"{len(sample_skips)} of {total} samples cannot be trained on (see "
                            f"{workdir / 'skips.json'}); more than data.max_skip_fraction")
    pipeline_config = PipelineConfig(
        global_batch_size=t.global_batch_size, buckets=config.data.buckets, num_epochs=t.epochs,
        seed=config.data.seed, workers=config.data.workers,
        image=ImageConfig(size=model.config.vision.image_size, mode=config.data.image_mode))
    pipeline = build_pipeline(samples, chat, data.images, pipeline_config, jax.process_index(), jax.process_count())
    total_steps = t.epochs * steps_per_epoch(samples, pipeline_config)
    total_steps = min(total_steps, t.max_steps) if t.max_steps else total_steps

    graphdef, trainable, frozen = split_model(model, t.mode)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nnx.to_pure_dict(trainable))
    param_shardings = _pure_shardings(trainable, mesh)
    params = jax.device_put(params, param_shardings)
    frozen = jax.device_put(frozen, jax.tree.map(lambda v: variable_sharding(v, mesh), frozen,
                                                 is_leaf=lambda x: isinstance(x, nnx.Variable)))
    tx = build_optimizer(t.optimizer, params, total_steps)
    with jax.set_mesh(mesh):
        state = jax.jit(lambda p: init_state(p, tx, t.seed), out_shardings=state_shardings(params, tx, t.seed, mesh))(
            params)
        step_fn = jax.jit(make_train_step(graphdef, trainable, tx, t.accum_steps, loss_chunk=t.loss_chunk),
                          donate_argnums=0)
    learning_rate = schedule(t.optimizer.learning_rate, total_steps, t.optimizer.warmup_ratio)
    batch_sharding = NamedSharding(mesh, logical_to_spec(("batch",)))

    checkpointer = Checkpointer(workdir / "checkpoints", t.keep_checkpoints)
    iterator = iter(pipeline)
    start = checkpointer.latest_step() or 0
    if start:
        state, _ = checkpointer.restore(start, state, iterator)
    log = MetricsLog(workdir, start) if primary else None
    stop = _PreemptionFlag()
    bar = _progress(progress and primary, start, total_steps)
    meta = {"total_steps": total_steps, "config": _plain(to_dict(config))}  # the resolved config, with each save
    step, nonfinite_run, tokens_since, tic = start, 0, 0, time.perf_counter()
    try:
        while step < total_steps and not stop.raised:
            local = next(iterator)
            batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
                     for k, v in local.items() if k in ("input_ids", "labels", "attention_mask", "pixel_values")}
            with jax.set_mesh(mesh):
                state, metrics = step_fn(state, frozen, batch)
            step += 1
            tokens_since += int(metrics["tokens"])
            finite = bool(metrics["finite"])
            nonfinite_run = 0 if finite else nonfinite_run + 1
            if nonfinite_run > t.max_consecutive_nonfinite:
                raise TrainingError(f"{nonfinite_run} consecutive non-finite steps up to step {step}; the last good "
                                    f"checkpoint (step {checkpointer.latest_step()}) is intact in {workdir}")
            if step % t.log_every == 0 or step == total_steps:
                seconds = time.perf_counter() - tic
                record = {"step": step, "loss": float(metrics["loss"]),
                          "learning_rate": float(learning_rate(int(state.step) - 1)),
                          "grad_norm": float(metrics["grad_norm"]), "tokens": int(metrics["tokens"]),
                          "tokens_per_s": round(tokens_since / seconds, 1),
                          "image_failures": int(local["image_failed"].sum()),
                          "nonfinite_steps": int(state.nonfinite_steps)}
                if log is not None:
                    log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                tok_s=record["tokens_per_s"])
                tokens_since, tic = 0, time.perf_counter()
            bar.update(1)
            if finite and (step % t.checkpoint_every == 0 or step == total_steps):
                checkpointer.save(step, state, iterator, {**meta, "step": step})
        if stop.raised and step < total_steps:
            checkpointer.save(step, state, iterator, {**meta, "step": step, "preempted": True})
    finally:
        checkpointer.wait()
        checkpointer.close()
        if log is not None:
            log.close()
        bar.close()
        stop.restore()
    if primary:
        plot_loss(workdir)
    return RunResult(step, total_steps, "preempted" if stop.raised and step < total_steps else "finished", workdir)


def _pure_shardings(state: nnx.State, mesh) -> dict:
    shardings = jax.tree.map(lambda v: v.replace(variable_sharding(v, mesh)), state,
                             is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


class _PreemptionFlag:
    """SIGTERM sets a flag; the loop saves a checkpoint at the current step and returns."""

    def __init__(self):
        self.raised = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
