"""The training run end to end: resume after kill -9, SIGTERM, sharded = single-device, bad configs."""

import json
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

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


def wait_for_step(workdir, step, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read()[-3000:])
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


def test_two_processes_on_loopback_give_the_single_device_losses(uninterrupted, tmp_path):
    import socket

    config, reference = uninterrupted
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = train_command(config, tmp_path / "work", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    processes = [subprocess.Popen(command + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                             "--process-id", str(i), "--cpu-collectives", "gloo"],
                                  env=environment(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    for (step, ours), (_, theirs) in zip(losses(tmp_path / "work"), losses(reference), strict=True):
        assert abs(ours - theirs) <= 1e-5, step
