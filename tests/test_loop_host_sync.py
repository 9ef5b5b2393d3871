"""The training loop reads no device value between its sync points (log steps, checkpoint steps, the last step): a
read would make the host wait for the step in flight instead of preparing the next batch."""

import json
import threading
from pathlib import Path

import jax.numpy as jnp
import pytest
from jax._src.array import ArrayImpl  # every read of a jax.Array's value (int, bool, float, np.asarray, device_get)

from vlguard_jax.config import load_config
from vlguard_jax.train import setup as run_setup
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.loop import TrainingError, train
from vlguard_jax.train.metrics_log import read_metrics

STEPS, LOG, SAVE = 20, 5, 10
OVERRIDES = [f"train.max_steps={STEPS}", "train.epochs=10", f"train.log_every={LOG}", f"train.checkpoint_every={SAVE}",
             "data.synthetic_options.num_instruct=40", "data.synthetic_options.num_train_images=4",
             "data.synthetic_options.num_test_images=1", "data.buckets=[256]"]


def test_the_loop_reads_the_device_only_at_log_and_checkpoint_steps(tmp_path, monkeypatch):
    dispatched, reads = [0], []  # steps dispatched so far; that count at each read on the loop's thread
    value = ArrayImpl.__dict__["_value"]

    def recorded(array):
        if threading.current_thread() is threading.main_thread():  # not Orbax's writer threads
            reads.append(dispatched[0])
        return value.__get__(array)

    make_step = run_setup.RunSetup.train_step

    def counted_step(self, *args, **kwargs):
        step = make_step(self, *args, **kwargs)

        def run(*inputs):
            dispatched[0] += 1
            return step(*inputs)
        return run

    monkeypatch.setattr(ArrayImpl, "_value", property(recorded))
    monkeypatch.setattr(run_setup.RunSetup, "train_step", counted_step)
    config = load_config(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml", OVERRIDES)
    result = train(config, tmp_path, progress=False)

    assert (result.steps, result.status) == (STEPS, "finished")
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(LOG, STEPS + 1, LOG))
    assert all(r["tokens_per_s"] > 0 and r["nonfinite_steps"] == 0 for r in records)
    sync_points = set(range(LOG, STEPS + 1, LOG)) | set(range(SAVE, STEPS + 1, SAVE))
    during = {count for count in reads if count > 0}  # reads before the first step belong to the set-up
    assert during <= sync_points, f"device values read after steps {sorted(during - sync_points)}"
    assert set(range(LOG, STEPS, LOG)) <= during  # the log points' reads are seen: the check can fail

    run = json.loads((tmp_path / "run.json").read_text())  # where it ran, and each part's attention
    assert run["backend"] == "cpu" and run["devices"] == 8 and run["processes"] == 1
    assert {part: v["implementation"] for part, v in run["attention"].items()} == {
        "decoder": "ours", "vision": "ours", "decode": "ours"}


def test_too_many_nonfinite_steps_stop_the_run_at_the_next_sync_point_with_the_last_good_checkpoint(tmp_path,
                                                                                                   monkeypatch):
    """NaN pixels at steps 8 and 11–15; at most 2 in a row allowed. Steps 8 and 12 are checkpoint steps but
    non-finite: neither is saved. The guard, read at sync points only, stops the run at step 15."""
    nan_steps = {8, 11, 12, 13, 14, 15}
    make_step, count = run_setup.RunSetup.train_step, [0]

    def poisoned_step(self, *args, **kwargs):
        step = make_step(self, *args, **kwargs)

        def run(state, frozen, batch):
            count[0] += 1
            if count[0] in nan_steps:
                batch = {**batch, "pixel_values": batch["pixel_values"] * jnp.nan}
            return step(state, frozen, batch)
        return run

    monkeypatch.setattr(run_setup.RunSetup, "train_step", poisoned_step)
    overrides = OVERRIDES + ["train.checkpoint_every=4", "train.max_consecutive_nonfinite=2"]
    config = load_config(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml", overrides)
    with pytest.raises(TrainingError, match=r"^5 consecutive non-finite steps by step 15; the last good checkpoint "
                                            r"\(step 4\) is intact in "):
        train(config, tmp_path, progress=False)
    assert Checkpointer(tmp_path / "checkpoints", read_only=True).latest_step() == 4
    records = read_metrics(tmp_path)
    assert [(r["step"], r["nonfinite_steps"]) for r in records] == [(5, 0), (10, 1)]
