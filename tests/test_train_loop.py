"""The training run end to end: resume after kill -9, SIGTERM, sharded = single-device, bad configs."""

import json
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.gcs_fixtures import gcs_bucket, local_gs_folders  # noqa: F401
from host_fixtures import finish, start
from train_fixtures import environment, run, train_command, write_config
from vlguard_jax.config import ConfigError, load_config
from vlguard_jax.train.metrics_log import read_metrics
from vlguard_jax.train.trained import load_trained


def losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir)]


def params(workdir):
    model, _ = load_trained(workdir)
    from flax import nnx

    return {str(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def wait_for_step(workdir, step, process, log=None, timeout=240):
    """Waits for `step` in the run's metrics; `log`: the file the process writes its stderr to (else a pipe)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError((open(log).read() if log else process.stderr.read())[-3000:])
        records = read_metrics(workdir)
        if records and records[-1]["step"] >= step:
            return records[-1]["step"]
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = write_config(root)
    run(train_command(config, root / "work"))
    return config, root / "work"


def test_run_writes_its_outputs_and_learns(uninterrupted):
    _, workdir = uninterrupted
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s"} <= records[0].keys()
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[1]["learning_rate"] > records[0]["learning_rate"]  # warmup, then cosine to zero
    for name in ("config.yaml", "mixture.json", "skips.json", "loss.png"):
        assert (workdir / name).exists(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(json.loads((workdir / "mixture.json").read_text())["parts"]["helpful"]) == 16


def test_kill_9_then_rerun_gives_the_uninterrupted_run_bitwise(uninterrupted, tmp_path):
    config, reference = uninterrupted
    workdir = tmp_path / "work"
    process = subprocess.Popen(train_command(config, workdir), env=environment(1), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(workdir, random.Random(0).randint(6, 14), process)
    process.kill()  # SIGKILL: no chance to save
    process.wait()
    run(train_command(config, workdir))
    assert losses(workdir) == losses(reference)
    ours, theirs = params(workdir), params(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_sigterm_saves_the_current_step(uninterrupted, tmp_path):
    config, _ = uninterrupted
    workdir = tmp_path / "work"
    process = subprocess.Popen(train_command(config, workdir, "train.checkpoint_every=100"), env=environment(1),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(workdir, 5, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    step = int(out.split("preempted at step ")[1].split("/")[0])
    assert step >= 5
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [step]


def test_sharded_mesh_gives_the_single_device_losses(uninterrupted, tmp_path):
    config, reference = uninterrupted
    run(train_command(config, tmp_path / "mesh", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), devices=8)
    for (step, ours), (_, theirs) in zip(losses(tmp_path / "mesh"), losses(reference), strict=True):
        assert abs(ours - theirs) <= 1e-5, step


def test_config_errors_name_the_key_and_the_numbers(uninterrupted, tmp_path):
    config, reference = uninterrupted
    with pytest.raises(ConfigError, match=r"tiny.yaml: unknown key train.epoch \(known in this section:"):
        load_config(config, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: train.global_batch_size must be int, got str 'big'"):
        load_config(config, ["train.global_batch_size=big"])
    from vlguard_jax.train.loop import train

    with pytest.raises(ConfigError, match=r"holds a run of a different configuration \(model.architecture.text_config"
                                          r".hidden_size: 64 → 96"):
        train(load_config(config, ["model.architecture.text_config.hidden_size=96"]), reference, progress=False)
    assert jax.device_count() == 8
    with pytest.raises(ValueError, match=r"mesh data=3 × fsdp=2 × tensor=1 = 6 does not match the 8 available"):
        train(load_config(config, ["mesh.data=3", "mesh.fsdp=2"]), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match=r"global_batch_size 12 / accum_steps 1 must divide over data × fsdp = 8"):
        train(load_config(config, ["mesh.data=8", "mesh.fsdp=1", "train.global_batch_size=12"]), tmp_path / "b",
              progress=False)


def test_two_hosts_without_a_shared_disk_give_the_single_device_losses(uninterrupted, gcs_bucket, tmp_path,
                                                                      monkeypatch):
    """Two processes on loopback, each with its own local cache (tokenized stores, synthetic data), their run in a
    bucket: the losses of one device, and no local folder for the bucket."""
    monkeypatch.chdir(tmp_path)
    config, reference = uninterrupted
    workdir = f"{gcs_bucket}/two-hosts"
    command = train_command(config, workdir, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    finish(start([command, command], tmp_path / "logs",
                 [{**environment(4), "XDG_CACHE_HOME": str(tmp_path / f"host{i}")} for i in range(2)]))
    for (step, ours), (_, theirs) in zip(losses(workdir), losses(reference), strict=True):
        assert abs(ours - theirs) <= 1e-5, step
    assert all(any((tmp_path / f"host{i}" / "vlguard-jax").iterdir()) for i in range(2))  # each host's own cache
    assert local_gs_folders(tmp_path) == []


def test_a_run_in_a_bucket_killed_and_rerun_gives_the_local_run_and_exports(uninterrupted, gcs_bucket, tmp_path,
                                                                            monkeypatch):
    """`--workdir gs://…`: kill -9 mid-run, re-run → the uninterrupted local run's losses and weights; the export
    from the bucket equals the local run's export, tensor for tensor, and loads in transformers."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from vlguard_jax.checkpoints.tensors import open_tensor_files
    from vlguard_jax.train.trained import export_workdir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    config, reference = uninterrupted
    workdir = f"{gcs_bucket}/runs/tiny"
    with open(tmp_path / "killed.log", "w") as log:  # a file: an unread pipe would stall the run
        process = subprocess.Popen(train_command(config, workdir), env=environment(1), stdout=subprocess.DEVNULL,
                                   stderr=log, text=True)
        wait_for_step(workdir, random.Random(1).randint(6, 14), process, tmp_path / "killed.log")
    process.kill()
    process.wait()
    run(train_command(config, workdir))
    assert losses(workdir) == losses(reference)
    assert local_gs_folders(tmp_path) == [] and local_gs_folders(".") == []
    ours = export_workdir(workdir, tmp_path / "from-bucket")
    theirs = export_workdir(reference, tmp_path / "from-disk")
    ours_files, theirs_files = open_tensor_files(ours), open_tensor_files(theirs)
    assert ours_files.keys() == theirs_files.keys()
    for name, file in ours_files.items():
        np.testing.assert_array_equal(file.read(name), theirs_files[name].read(name), err_msg=name)
    model, info = LlavaForConditionalGeneration.from_pretrained(ours, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert AutoTokenizer.from_pretrained(ours)("<image> hi").input_ids == \
        AutoTokenizer.from_pretrained(theirs)("<image> hi").input_ids
