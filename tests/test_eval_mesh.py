"""Evaluation on the mesh: a run trained on 8 devices evaluates identically on 1 and on 4 devices, and a
2-process × 4-device evaluation (gloo, loopback) equals the 1-process output and resumes after kill -9 of both."""

import socket
import subprocess
import sys
import time

import pytest

from train_fixtures import TINY, environment, run, train_command, write_config

pytestmark = pytest.mark.slow

EVAL_CONFIG = {**TINY, "data": {**TINY["data"], "synthetic_options": {**TINY["data"]["synthetic_options"],
                                                                      "num_test_images": 24}},
               "train": {**TINY["train"], "max_steps": 6}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_mesh")
    config = write_config(root, EVAL_CONFIG)
    run(train_command(config, root / "work", "mesh.fsdp=8"), devices=8)
    return root / "work"


def eval_command(workdir, out, *extra):
    data = workdir / "data"
    return [sys.executable, "-m", "vlguard_jax.cli", "eval", "--model", str(workdir), "--benchmark", "vlguard",
            "--data", str(data / "vlguard_test.json"), "--images", str(data / "images"), "--out", str(out),
            "--batch-size", "8", "--max-new-tokens", "12", "--dtype", "float32", *extra]


def responses(out) -> dict:
    return {path.parent.name: path.read_bytes() for path in sorted(out.glob("*/responses.jsonl"))}


@pytest.fixture(scope="module")
def one_device(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval1") / "out"
    run(eval_command(trained, out), devices=1)
    return out


def test_eval_on_1_and_4_devices_gives_identical_responses(trained, one_device, tmp_path):
    run(eval_command(trained, tmp_path / "four", "--mesh", "data=2,fsdp=2"), devices=4)
    ours, theirs = responses(tmp_path / "four"), responses(one_device)
    assert set(theirs) == {"vlguard_unsafes", "vlguard_safe_unsafes", "vlguard_safe_safes"}
    assert sum(len(v.splitlines()) for v in theirs.values()) == 36  # 12 unsafe + 12 safe images × 2 questions
    assert ours == theirs


def _two_processes(command):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [subprocess.Popen(command + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                        "--process-id", str(i), "--cpu-collectives", "gloo"],
                             env=environment(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def test_two_process_eval_equals_one_process_and_resumes_after_kill_9(trained, one_device, tmp_path):
    out = tmp_path / "two"
    processes = _two_processes(eval_command(trained, out))
    deadline = time.time() + 240
    while not (out / "vlguard_unsafes" / "responses.jsonl").exists():  # killed once the first batch is written
        assert time.time() < deadline and all(p.poll() is None for p in processes), processes[0].stderr.read()
        time.sleep(0.05)
    for process in processes:
        process.kill()
        process.wait()
    written = sum(len(v.splitlines()) for v in responses(out).values())
    assert 0 < written < 36, written
    processes = _two_processes(eval_command(trained, out))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    assert responses(out) == responses(one_device)
