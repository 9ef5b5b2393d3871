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
import yaml
from jax.experimental import multihost_utils

from vlguard_jax.checkpoints.tensors import atomic_write_text
from vlguard_jax.config import Config, ConfigError, dump_config, to_dict
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.images import ImageConfig
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, steps_per_epoch
from vlguard_jax.data.recipes import TrainingData, synthetic_dataset, training_data
from vlguard_jax.data.store import Samples
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.metrics_log import MetricsLog, plot_loss
from vlguard_jax.train.optimizer import schedule
from vlguard_jax.train.preemption import Preemption
from vlguard_jax.train.setup import RunSetup, build, load_tokenizer, mesh_for, model_config
from vlguard_jax.train.trained import tokenizer_dir

# Sections that must not change under an existing checkpoint (epochs / max_steps may, to extend a run).
PINNED = ("model", "data", "train.mode", "train.lora", "train.global_batch_size", "train.accum_steps", "train.seed")
UNPINNED = ("data.cache_dir",)  # where tokenized data is cached changes no sample


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
                          f"over data × fsdp = {shards} devices")


def write_run_files(config: Config, workdir: Path, primary: bool) -> None:
    """The resolved config (and synthetic data with its tokenizer), written once before any process reads them."""
    if primary:
        dump_config(config, workdir / "config.yaml")
        if config.data.synthetic:
            synthetic_dataset(config.data, workdir)
    multihost_utils.sync_global_devices("vlguard-jax: run files ready")


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
    step reached and whether the run was preempted."""
    t = config.train
    step_fn = setup.train_step(t.accum_steps, loss_chunk=t.loss_chunk)
    learning_rate = schedule(t.optimizer.learning_rate, total_steps, t.optimizer.warmup_ratio, t.optimizer.decay)
    log = MetricsLog(workdir, start) if jax.process_index() == 0 else None
    bar = _progress(progress, start, total_steps)
    meta = {"total_steps": total_steps, "config": _plain(to_dict(config))}  # the resolved config, with each save
    step, nonfinite_run, tokens_since, tic = start, 0, 0, time.perf_counter()
    try:
        while step < total_steps and not stop.should_stop():
            local = next(iterator)
            batch = {k: jax.make_array_from_process_local_data(setup.batch_sharding, v)
                     for k, v in local.items() if k in ("input_ids", "labels", "attention_mask", "pixel_values")}
            with jax.set_mesh(setup.mesh):
                state, metrics = step_fn(state, setup.frozen, batch)
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
        preempted = stop.stopped and step < total_steps
        if preempted and step > (checkpointer.latest_step() or 0):  # a stop before any new step saves nothing
            checkpointer.save(step, state, iterator, {**meta, "step": step, "preempted": True})
    finally:
        if log is not None:
            log.close()
        bar.close()
    return step, preempted


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
