"""`train(config, workdir)`: the whole fine-tuning run, resumable by re-running it with the same workdir.

A short composition of named steps: run files (`write_run_files`), the tokenizer, the data (tokenized once into
memory-mapped stores, `data.store`), samples, the pipeline, the shared run setup straight onto the mesh
(`train.setup`), then `run_steps`. Re-running restores the newest checkpoint (state and data iterator, over the
recorded mixture) and continues bit-for-bit; SIGTERM to any one process makes every process save the same step and
return; repeated non-finite steps stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.experimental import multihost_utils

from vlguard_jax.checkpoints.tensors import atomic_write_text
from vlguard_jax.config import Config, ConfigError, dump_config, to_dict
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.images import ImageConfig
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, steps_per_epoch
from vlguard_jax.data.recipes import TrainingData, synthetic_dataset, training_data
from vlguard_jax.data.store import Samples
from vlguard_jax.parallel import place_replicated
from vlguard_jax.train.checkpointing import Checkpointer, DataState
from vlguard_jax.train.metrics_log import MetricsLog, plot_loss
from vlguard_jax.train.optimizer import schedule
from vlguard_jax.train.preemption import Preemption
from vlguard_jax.train.setup import RunSetup, attention_choices, build, load_tokenizer, mesh_for, model_config
from vlguard_jax.train.trained import tokenizer_dir

# Sections that must not change under an existing checkpoint (epochs / max_steps may, to extend a run).
PINNED = ("model", "data", "train.mode", "train.lora", "train.global_batch_size", "train.accum_steps", "train.seed")
UNPINNED = ("data.cache_dir", "model.attention")  # where tokenized data is cached changes no sample; which kernel
# attends changes no result beyond rounding (a run may resume on another backend)


class TrainingError(RuntimeError):
    pass


@dataclasses.dataclass
class RunResult:
    steps: int  # batches consumed so far
    total_steps: int
    status: str  # "finished", "preempted"
    workdir: Path


def check_workdir(config: Config, workdir: Path) -> None:
    """A workdir's checkpoint must belong to the same model and data: says which fields differ."""
    saved_path = workdir / "config.yaml"
    if not saved_path.exists():
        return
    saved, current = _flatten(yaml.safe_load(saved_path.read_text())), _flatten(_plain(to_dict(config)))
    differ = [k for k in sorted(set(saved) | set(current))
              if k.startswith(PINNED) and not k.startswith(UNPINNED) and saved.get(k) != current.get(k)]
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
    check_batch(config, mesh)
    stop = Preemption()  # from here on: a signal during set-up stops the run before its first step
    try:
        return _train(config, workdir, mesh, stop, progress)
    finally:
        stop.close()


def _train(config: Config, workdir: Path, mesh, stop: Preemption, progress: bool) -> RunResult:
    primary = jax.process_index() == 0  # one writer of run files and tokenized data; every host reads the same
    write_run_files(config, workdir, primary)
    tokenizer = load_tokenizer(config, tokenizer_dir(config, workdir))
    llava = model_config(config, tokenizer)
    record_backend(config, llava, mesh, workdir, primary)
    try:
        llava.check_template(config.data.template)
    except ValueError as e:
        raise ConfigError(f"data.template: {e}") from None
    chat = ChatTokenizer(tokenizer, config.data.template, llava.num_image_tokens, config.data.max_length,
                         config.data.truncation)
    record_tokenization(chat, workdir, primary)
    data = training_data(config.data, workdir, chat, primary, multihost_utils.sync_global_devices)
    samples = training_samples(config, data, workdir, primary)
    pipeline, total_steps = data_pipeline(config, samples, chat, data, llava)
    checkpointer = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    iterator = iter(pipeline)
    start = checkpointer.latest_step() or 0
    setup = build(config, mesh, values="frozen" if start else "init", llava=llava, tokenizer=tokenizer,
                  total_steps=total_steps)  # a resumed run reads its trainable weights from the checkpoint alone
    state = checkpointer.restore(start, setup.abstract_state(), iterator)[0] if start else setup.init_state()
    try:
        step, stopped = run_steps(config, setup, state, iterator, checkpointer, workdir, start, total_steps, stop,
                                  progress and primary)
    finally:
        checkpointer.wait()
        checkpointer.close()
    if primary:
        plot_loss(workdir)
    return RunResult(step, total_steps, "preempted" if stopped else "finished", workdir)


def check_batch(config: Config, mesh) -> None:
    t, shards = config.train, mesh.shape["data"] * mesh.shape["fsdp"]
    if t.global_batch_size % t.accum_steps or (t.global_batch_size // t.accum_steps) % shards:
        raise ConfigError(f"train.global_batch_size {t.global_batch_size} / accum_steps {t.accum_steps} must divide "
                          f"over data × fsdp = {shards} devices (each device splits its own rows into the "
                          f"micro-batches)")


def write_run_files(config: Config, workdir: Path, primary: bool) -> None:
    """The resolved config (and synthetic data with its tokenizer), written once before any process reads them."""
    if primary:
        dump_config(config, workdir / "config.yaml")
        if config.data.synthetic:
            synthetic_dataset(config.data, workdir)
    multihost_utils.sync_global_devices("vlguard-jax: run files ready")


def record_backend(config: Config, llava, mesh, workdir: Path, primary: bool) -> None:
    """WORKDIR/run.json: where this start of the run executes and each model part's attention implementation
    (`setup.attention_choices`), so a figure read from the run's metrics can be traced to its kernels."""
    devices = mesh.devices.flat
    facts = {"backend": devices[0].platform, "device_kind": devices[0].device_kind, "devices": mesh.devices.size,
             "processes": jax.process_count(), "mesh": dict(mesh.shape),
             "attention": attention_choices(config, llava, devices[0].platform)}
    if primary:
        atomic_write_text(workdir / "run.json", json.dumps(facts, indent=1))


def record_tokenization(chat: ChatTokenizer, workdir: Path, primary: bool) -> None:
    """WORKDIR/tokenization.json: how this run's samples were tokenized (`ChatTokenizer.fingerprint`). A later start
    whose tokenizer or settings tokenize differently is refused: its samples would not be the ones trained on."""
    path, current = workdir / "tokenization.json", chat.fingerprint()
    if path.exists():
        recorded = json.loads(path.read_text())
        differ = [f"{k}: {recorded.get(k)!r} → {current.get(k)!r}" for k in sorted(set(recorded) | set(current))
                  if recorded.get(k) != current.get(k)]
        if differ:
            raise ConfigError(f"{path}: this run was tokenized otherwise ({'; '.join(differ)}); use the tokenizer "
                              f"it started with or a new --workdir")
    elif any((workdir / "checkpoints").glob("[0-9]*")):
        raise ConfigError(f"{workdir} holds a run saved before its tokenization was recorded (no {path.name}); "
                          f"its samples may have been tokenized otherwise: start a new --workdir")
    elif primary:
        atomic_write_text(path, json.dumps(current, indent=1))


def training_samples(config: Config, data: TrainingData, workdir: Path, primary: bool) -> Samples:
    """The mixture's trainable samples; every skip is written to WORKDIR/skips.json, and too many stop the run."""
    samples, sample_skips = data.samples, data.sample_skips
    skips = data.skips + sample_skips
    if primary:
        (workdir / "skips.json").write_text(json.dumps([dataclasses.asdict(s) for s in skips], indent=1))
        print(f"{len(samples)} training samples; {len(skips)} skipped (reasons in {workdir / 'skips.json'})")
    total = len(samples) + len(sample_skips)
    if total and len(sample_skips) / total > config.data.max_skip_fraction:
        raise TrainingError(f"{len(sample_skips)} of {total} samples cannot be trained on (see "
                            f"{workdir / 'skips.json'}); more than data.max_skip_fraction")
    return samples


def data_pipeline(config: Config, samples: Samples, chat: ChatTokenizer, data: TrainingData, llava) -> tuple:
    """This host's Grain pipeline and the run's length in steps."""
    t = config.train
    images = ImageConfig(size=llava.vision.image_size, mode=config.data.image_mode) if llava.vision else ImageConfig()
    pipeline_config = PipelineConfig(
        global_batch_size=t.global_batch_size, buckets=config.data.buckets, num_epochs=t.epochs,
        seed=config.data.seed, workers=config.data.workers, image=images)
    pipeline = build_pipeline(samples, chat, data.images, pipeline_config, jax.process_index(), jax.process_count())
    total_steps = t.epochs * steps_per_epoch(samples, pipeline_config)
    return pipeline, min(total_steps, t.max_steps) if t.max_steps else total_steps


def run_steps(config: Config, setup: RunSetup, state, iterator, checkpointer: Checkpointer, workdir: Path,
              start: int, total_steps: int, stop: Preemption, progress: bool) -> tuple[int, bool]:
    """Steps from `start` until the end or a preemption (saved at the step every process stops at); returns the
    step reached and whether the run was preempted.

    The host never waits for the device between sync points (log steps, checkpoint steps, the last step and a
    preemption): while a step runs, the next batch is read and copied onto the mesh, and the step's metrics are
    folded into a window on device (`_accumulate`) that the next sync point reads (`_sync`). The non-finite guard
    is checked there: a run longer than `train.max_consecutive_nonfinite` stops the run before any later save."""
    t = config.train
    step_fn = setup.train_step(t.accum_steps, loss_chunk=t.loss_chunk)
    learning_rate = schedule(t.optimizer.learning_rate, total_steps, t.optimizer.warmup_ratio, t.optimizer.decay)
    log = MetricsLog(workdir, start) if jax.process_index() == 0 else None
    bar = _progress(progress, start, total_steps)
    meta = {"total_steps": total_steps, "config": _plain(to_dict(config))}  # the resolved config, with each save
    step, tic, window = start, time.perf_counter(), _window(setup.mesh)
    ahead = _read(iterator, setup.batch_sharding) if step < total_steps else None
    try:
        while step < total_steps and not stop.should_stop(poll=step % t.log_every == 0):
            current = ahead
            with jax.set_mesh(setup.mesh):
                state, metrics = step_fn(state, setup.frozen, current.batch)
                window = _accumulate(window, metrics)
            step += 1
            ahead = _read(iterator, setup.batch_sharding) if step < total_steps else None  # while the step runs
            consumed = ahead.before if ahead else iterator  # the data state after this step's batch
            logging = step % t.log_every == 0 or step == total_steps
            saving = step % t.checkpoint_every == 0 or step == total_steps
            if logging or saving:
                seen = _sync(window, metrics, state, t.max_consecutive_nonfinite, step, checkpointer, workdir)
                if logging:
                    record = {"step": step, "loss": float(seen["loss"]),
                              "learning_rate": float(learning_rate(int(seen["updates"]) - 1)),
                              "grad_norm": float(seen["grad_norm"]), "tokens": int(seen["tokens"]),
                              "tokens_per_s": round(int(seen["window"]["tokens"]) / (time.perf_counter() - tic), 1),
                              "image_failures": int(current.local["image_failed"].sum()),
                              "nonfinite_steps": int(seen["nonfinite_steps"])}
                    if log is not None:
                        log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                    tok_s=record["tokens_per_s"])
                    window, tic = _window(setup.mesh, seen["window"]["run"]), time.perf_counter()
                if saving and seen["finite"]:
                    checkpointer.save(step, state, consumed, {**meta, "step": step})
            bar.update(1)
        preempted = stop.stopped and step < total_steps
        if preempted and step > (checkpointer.latest_step() or 0):  # a stop before any new step saves nothing
            _sync(window, metrics, state, t.max_consecutive_nonfinite, step, checkpointer, workdir)
            checkpointer.save(step, state, consumed, {**meta, "step": step, "preempted": True})
    finally:
        if log is not None:
            log.close()
        bar.close()
    return step, preempted


BATCH_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values")


@dataclasses.dataclass
class _Batch:
    before: DataState  # the iterator's state before this batch: what a save after the previous step records
    local: dict  # this host's rows (numpy)
    batch: dict  # the global batch on the mesh


def _read(iterator, sharding) -> _Batch:
    """The next batch, its copy onto the mesh started (asynchronous)."""
    before = DataState(iterator)
    local = next(iterator)
    batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items() if k in BATCH_KEYS}
    return _Batch(before, local, batch)


def _window(mesh, run=0) -> dict:
    """The metrics window on device: supervised tokens since the last log point, the current run of non-finite
    steps (carried over from the last window) and the longest run in this window."""
    host = {"tokens": np.int32(0), "run": np.int32(run), "longest": np.int32(run)}
    return {k: place_replicated(v, mesh) for k, v in host.items()}


@jax.jit
def _accumulate(window: dict, metrics: dict) -> dict:
    run = jnp.where(metrics["finite"], 0, window["run"] + 1)
    return {"tokens": window["tokens"] + metrics["tokens"], "run": run, "longest": jnp.maximum(window["longest"], run)}


def _sync(window, metrics, state, limit: int, step: int, checkpointer: Checkpointer, workdir: Path) -> dict:
    """The window, the last step's metrics and the state's counters, read from the device in one transfer; stops
    the run when too many consecutive steps were non-finite (they never moved the parameters, so the last
    checkpoint holds good ones)."""
    seen = jax.device_get({"window": window, **metrics, "updates": state.step,
                           "nonfinite_steps": state.nonfinite_steps})
    if seen["window"]["longest"] > limit:
        raise TrainingError(f"{seen['window']['longest']} consecutive non-finite steps by step {step}; the last good "
                            f"checkpoint (step {checkpointer.latest_step()}) is intact in {workdir}")
    return seen


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
