"""`train(config, workdir)`: the whole fine-tuning run, resumable by re-running it with the same workdir.

A short composition of named steps: run files (`write_run_files`), the tokenizer, the data (VLGuard turned into
preference pairs first when asked, `data.vlguard_pairs`; tokenized once into memory-mapped stores, `data.store`),
samples, the pipeline, the shared run setup straight onto the mesh (`train.setup`), then `run_steps`. Re-running restores the newest checkpoint, reads the recorded mixture's batches on
from its step and continues bit-for-bit; SIGTERM to any one process makes every process save the same step and
return; repeated non-finite steps stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from vlguard_jax import storage
from vlguard_jax.config import Config, ConfigError, dump_config, to_dict
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, steps_per_epoch
from vlguard_jax.data.recipes import TrainingData, synthetic_dataset, training_data
from vlguard_jax.data.store import Samples
from vlguard_jax.data.vision_inputs import TILED_KEYS, VisionInputs
from vlguard_jax.data.vlguard_pairs import ensure_pairs
from vlguard_jax.parallel import place_replicated
from vlguard_jax.train import TrainingError
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.metrics_log import MetricsLog, plot_loss
from vlguard_jax.train.optimizer import schedule
from vlguard_jax.train.pins import check_workdir
from vlguard_jax.train.preemption import Preemption
from vlguard_jax.train.preference import PREFERENCE_SUMS
from vlguard_jax.train.reference_pass import reference_logps
from vlguard_jax.train.setup import RunSetup, attention_choices, build, load_tokenizer, mesh_for, model_config
from vlguard_jax.train.totals import Totals
from vlguard_jax.train.trained import tokenizer_dir


@dataclasses.dataclass
class RunResult:
    steps: int  # batches consumed so far
    total_steps: int
    status: str  # "finished", "preempted"
    workdir: storage.Path
    totals: Totals  # what the run trained on (`Totals.line()`: the summary `train` ends with)


def _plain(value):
    return json.loads(json.dumps(value))


def train(config: Config, workdir: storage.PathLike, progress: bool = True) -> RunResult:
    """`workdir`: a local folder or a bucket URI (`gs://…`), every host writing through `storage` and Orbax."""
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(config, workdir)
    mesh = mesh_for(config)
    check_batch(config, mesh)
    stop = Preemption()  # from here on: a signal during set-up stops the run before its first step
    try:
        return _train(config, workdir, mesh, stop, progress)
    finally:
        stop.close()


def _train(config: Config, workdir: storage.Path, mesh, stop: Preemption, progress: bool) -> RunResult:
    primary = jax.process_index() == 0  # one writer of run files and tokenized data; every host reads the same
    write_run_files(config, workdir, primary)
    tokenizer = load_tokenizer(config, tokenizer_dir(config, workdir))
    llava = model_config(config, tokenizer)
    record_backend(config, llava, mesh, workdir, primary)
    try:
        llava.check_template(config.data.template)
    except ValueError as e:
        raise ConfigError(f"data.template: {e}") from None
    vision = VisionInputs.of(llava, config.data.image_mode) if llava.vision else None
    chat = ChatTokenizer(tokenizer, config.data.template, None if llava.anyres else llava.num_image_tokens,
                         config.data.max_length, config.data.truncation)  # any resolution: each image its own count
    record_tokenization(chat, workdir, primary)
    readable = ensure_pairs(config, workdir, primary)  # VLGuard as pairs: converted once (the run keeps `config`)
    data = training_data(readable.data, workdir, chat, primary, multihost_utils.sync_global_devices, vision)
    samples = training_samples(config, data, workdir, primary)
    checkpointer = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    start = checkpointer.latest_step() or 0
    pipeline_config = pipeline_settings(config, vision)
    total_steps = run_length(config, samples, pipeline_config)
    resumed_sft = start and config.train.objective == "sft"  # a preference run's reference needs the initial weights
    setup = build(config, mesh, values="frozen" if resumed_sft else "init", llava=llava, tokenizer=tokenizer,
                  total_steps=total_steps)  # a resumed run reads its trainable weights from the checkpoint alone
    reference = None
    if setup.preference is not None and setup.preference.reference == "precomputed":
        reference = reference_logps(setup, data, chat, pipeline_config, workdir)
        setup.reference = None  # the steps read the stored values: the weights are freed
    iterator = iter(build_pipeline(samples, chat, data.images, pipeline_config, jax.process_index(),
                                   jax.process_count(), start, data.rejected, reference))
    state = checkpointer.restore(start, setup.abstract_state())[0] if start else setup.init_state()
    try:
        step, stopped, totals = run_steps(config, setup, state, iterator, checkpointer, workdir, start, total_steps,
                                          stop, progress and primary)
    finally:
        checkpointer.wait()
        checkpointer.close()
    if primary:
        plot_loss(workdir)
    return RunResult(step, total_steps, "preempted" if stopped else "finished", workdir, totals)


def check_batch(config: Config, mesh) -> None:
    t, shards = config.train, mesh.shape["data"] * mesh.shape["fsdp"]
    if t.global_batch_size % t.accum_steps or (t.global_batch_size // t.accum_steps) % shards:
        raise ConfigError(f"train.global_batch_size {t.global_batch_size} / accum_steps {t.accum_steps} must divide "
                          f"over data × fsdp = {shards} devices (each device splits its own rows into the "
                          f"micro-batches)")


def write_run_files(config: Config, workdir: storage.Path, primary: bool) -> None:
    """The resolved config (and synthetic data with its tokenizer), written once before any process reads them."""
    if primary:
        dump_config(config, workdir / "config.yaml")
        if config.data.synthetic:
            synthetic_dataset(config.data, workdir)
    multihost_utils.sync_global_devices("vlguard-jax: run files ready")


def record_backend(config: Config, llava, mesh, workdir: storage.Path, primary: bool) -> None:
    """WORKDIR/run.json: where this start of the run executes and each model part's attention implementation
    (`setup.attention_choices`), so a figure read from the run's metrics can be traced to its kernels."""
    devices = mesh.devices.flat
    facts = {"backend": devices[0].platform, "device_kind": devices[0].device_kind, "devices": mesh.devices.size,
             "processes": jax.process_count(), "mesh": dict(mesh.shape),
             "attention": attention_choices(config, llava, devices[0].platform)}
    if primary:
        storage.write_json(workdir / "run.json", facts)


def record_tokenization(chat: ChatTokenizer, workdir: storage.Path, primary: bool) -> None:
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
        storage.write_json(path, current)


def training_samples(config: Config, data: TrainingData, workdir: storage.Path, primary: bool) -> Samples:
    """The mixture's trainable samples; every skip is written to WORKDIR/skips.json, and too many stop the run."""
    samples, sample_skips = data.samples, data.sample_skips
    skips = data.skips + sample_skips
    if primary:
        storage.write_json(workdir / "skips.json", [dataclasses.asdict(s) for s in skips])
        unit = "preference pairs" if data.rejected is not None else "training samples"
        print(f"{len(samples)} {unit}; {len(skips)} skipped (reasons in {workdir / 'skips.json'})")
    total = len(samples) + len(sample_skips)
    if total and len(sample_skips) / total > config.data.max_skip_fraction:
        raise TrainingError(f"{len(sample_skips)} of {total} samples cannot be trained on (see "
                            f"{workdir / 'skips.json'}); more than data.max_skip_fraction")
    return samples


def pipeline_settings(config: Config, vision: VisionInputs | None) -> PipelineConfig:
    """`vision`: the model's image inputs (None: a text-only model)."""
    t = config.train
    return PipelineConfig(global_batch_size=t.global_batch_size, buckets=config.data.buckets, num_epochs=t.epochs,
                          seed=config.data.seed, workers=config.data.workers, vision=vision)


def run_length(config: Config, samples: Samples, pipeline_config: PipelineConfig) -> int:
    """The run's length in steps: its epochs, or `train.max_steps` when fewer."""
    t = config.train
    total_steps = t.epochs * steps_per_epoch(samples, pipeline_config)
    return min(total_steps, t.max_steps) if t.max_steps else total_steps


def run_steps(config: Config, setup: RunSetup, state, iterator, checkpointer: Checkpointer, workdir: storage.Path,
              start: int, total_steps: int, stop: Preemption, progress: bool) -> tuple[int, bool, Totals]:
    """Steps from `start` until the end or a preemption (saved at the step every process stops at); returns the
    step reached, whether the run was preempted and the run's totals.

    The host never waits for the device between sync points (log steps, checkpoint steps, the last step and a
    preemption): while a step runs, the next batch is read and copied onto the mesh, and the step's metrics and its
    rows' image failures are folded into a window on device (`_accumulate`) that the next sync point reads
    (`_sync`). The guards are checked there, on values every process reads alike: more consecutive non-finite steps
    than `train.max_consecutive_nonfinite`, or more rows whose image failed than `data.max_image_failures` of the
    run's rows, stop the run before any later save."""
    t = config.train
    step_fn = setup.train_step(t.accum_steps, loss_chunk=t.loss_chunk)
    learning_rate = schedule(t.optimizer.learning_rate, total_steps, t.optimizer.warmup_ratio, t.optimizer.decay)
    log = MetricsLog(workdir, start) if jax.process_index() == 0 else None
    bar = _progress(progress, start, total_steps)
    meta = {"total_steps": total_steps, "config": _plain(to_dict(config))}  # the resolved config, with each save
    step, tic, window = start, time.perf_counter(), _window(setup.mesh)
    counts = _Counts(Totals.restored(checkpointer.read_meta(start) if start else None, start), start,
                     t.global_batch_size, config.data.max_image_failures, total_steps)
    ahead = _read(iterator, setup.batch_sharding) if step < total_steps else None
    try:
        while step < total_steps and not stop.should_stop(poll=step % t.log_every == 0):
            current = ahead
            counts.see(current.local)
            with jax.set_mesh(setup.mesh):
                state, metrics = step_fn(state, setup.step_weights, current.batch)
                window = _accumulate(window, metrics, current.image_failed)
            step += 1
            ahead = _read(iterator, setup.batch_sharding) if step < total_steps else None  # while the step runs
            logging = step % t.log_every == 0 or step == total_steps
            saving = step % t.checkpoint_every == 0 or step == total_steps
            if logging or saving:
                seen = _sync(window, metrics, state, t.max_consecutive_nonfinite, step, checkpointer, workdir)
                totals = counts.synced(seen["window"], step, checkpointer, workdir)
                if logging:
                    record = {"step": step, "loss": float(seen["loss"]),
                              "learning_rate": float(learning_rate(int(seen["updates"]) - 1)),
                              "grad_norm": float(seen["grad_norm"]), "tokens": int(seen["tokens"]),
                              "tokens_per_s": round(int(seen["window"]["tokens"]) / (time.perf_counter() - tic), 1),
                              "image_failures": totals.image_failures, "empty_steps": totals.empty_steps,
                              "nonfinite_steps": int(seen["nonfinite_steps"]),  # the last three: the run's so far
                              **{k: float(seen[k]) for k in PREFERENCE_SUMS if k in seen}}
                    if log is not None:
                        log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                    tok_s=record["tokens_per_s"])
                    window, tic = _window(setup.mesh, seen["window"]["run"]), time.perf_counter()
                    counts.reset(step)
                if saving and seen["finite"]:
                    checkpointer.save(step, state, {**meta, "step": step, "totals": dataclasses.asdict(totals)})
            bar.update(1)
        preempted = stop.stopped and step < total_steps
        if preempted and step > (checkpointer.latest_step() or 0):  # a stop before any new step saves nothing
            seen = _sync(window, metrics, state, t.max_consecutive_nonfinite, step, checkpointer, workdir)
            totals = counts.synced(seen["window"], step, checkpointer, workdir)
            checkpointer.save(step, state, {**meta, "step": step, "preempted": True,
                                            "totals": dataclasses.asdict(totals)})
    finally:
        if log is not None:
            log.close()
        bar.close()
    return step, preempted, counts.totals


BATCH_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values", *TILED_KEYS, "reference_logps")  # `[rows, …]`
SHOWN_FAILURES = 5  # rows whose image failed that the stop names


@dataclasses.dataclass
class _Batch:
    local: dict  # this host's rows (numpy)
    batch: dict  # the global batch on the mesh
    image_failed: jax.Array  # its rows whose image failed to load, on the mesh: every process sums all hosts' rows


def _read(iterator, sharding) -> _Batch:
    """The next batch, its copy onto the mesh started (asynchronous)."""
    local = next(iterator)
    batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items() if k in BATCH_KEYS}
    return _Batch(local, batch, jax.make_array_from_process_local_data(sharding, local["image_failed"]))


def _window(mesh, run=0) -> dict:
    """The metrics window on device: supervised tokens, steps without any and rows whose image failed since the
    last log point, the current run of non-finite steps (carried over from the last window) and the longest run in
    this window."""
    host = {"tokens": np.int32(0), "empty_steps": np.int32(0), "image_failures": np.int32(0), "run": np.int32(run),
            "longest": np.int32(run)}
    return {k: place_replicated(v, mesh) for k, v in host.items()}


@jax.jit
def _accumulate(window: dict, metrics: dict, image_failed: jax.Array) -> dict:
    run = jnp.where(metrics["finite"], 0, window["run"] + 1)
    return {"tokens": window["tokens"] + metrics["tokens"],
            "empty_steps": window["empty_steps"] + (metrics["tokens"] == 0).astype(jnp.int32),
            "image_failures": window["image_failures"] + jnp.sum(image_failed, dtype=jnp.int32),
            "run": run, "longest": jnp.maximum(window["longest"], run)}


def _sync(window, metrics, state, limit: int, step: int, checkpointer: Checkpointer,
          workdir: storage.Path) -> dict:
    """The window, the last step's metrics and the state's counters, read from the device in one transfer; stops
    the run when too many consecutive steps were non-finite (they never moved the parameters, so the last
    checkpoint holds good ones)."""
    seen = jax.device_get({"window": window, **metrics, "updates": state.step,
                           "nonfinite_steps": state.nonfinite_steps})
    if seen["window"]["longest"] > limit:
        raise TrainingError(f"{seen['window']['longest']} consecutive non-finite steps by step {step}; the last good "
                            f"checkpoint (step {checkpointer.latest_step()}) is intact in {workdir}")
    return seen


class _Counts:
    """The run's totals on the host: those at the last window reset plus the window read at each sync point; and
    the guard on rows whose image failed, with this host's first failures by name (read from its numpy rows: no
    wait on the device). A process sees only its own rows' names; the counts, from the device, are everyone's."""

    def __init__(self, totals: Totals, start: int, rows_per_step: int, max_failures: float, total_steps: int):
        self.totals, self.base, self.since, self.rows_per_step = totals, totals, start, rows_per_step
        self.max_failures, self.run_rows = max_failures, total_steps * rows_per_step
        self.named: list[str] = []  # this host's first failures

    def see(self, local: dict) -> None:
        """Notes the first failures of a batch this host's step is about to train on."""
        if len(self.named) < SHOWN_FAILURES and local["image_failed"].any():
            self.named += list(local["image_error"][local["image_failed"]])[:SHOWN_FAILURES - len(self.named)]

    def synced(self, window: dict, step: int, checkpointer: Checkpointer, workdir: storage.Path) -> Totals:
        """The totals at `step` from the window just read; stops the run past data.max_image_failures."""
        self.totals = self.base.plus(window, (step - self.since) * self.rows_per_step)
        failures = self.totals.image_failures
        if failures > self.max_failures * self.run_rows:
            where = f" (process {jax.process_index()}'s first; each process names its own)" * (jax.process_count() > 1)
            raise TrainingError(
                f"{failures} rows' images failed to load by step {step}, more than data.max_image_failures="
                f"{self.max_failures:g} of the run's {self.run_rows} rows{where}: "
                f"{'; '.join(self.named) or 'none on this process'}. Repair or remove those images (or raise "
                f"data.max_image_failures) and re-run: the last checkpoint (step {checkpointer.latest_step()}) is "
                f"intact in {workdir}")
        return self.totals

    def reset(self, step: int) -> None:
        """The device window starts again at `step`."""
        self.base, self.since = self.totals, step


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
