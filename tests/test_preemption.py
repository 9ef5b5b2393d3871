"""Preemption across hosts: SIGTERM to one of two processes stops both after the same step, saved; re-running
resumes and ends with the losses of an uninterrupted run."""

import signal
import socket
import subprocess
import time

import pytest

from train_fixtures import environment, train_command, write_config
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.metrics_log import read_metrics

pytestmark = pytest.mark.slow

STEPS = 20  # long enough to be still running when signalled (it stops within a step or two of step 5)
OVERRIDES = ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.epochs=10", f"train.max_steps={STEPS}",
             "train.checkpoint_every=100")


def start_two(config, workdir, logs, tag):
    """Two processes × 4 CPU devices over gloo on loopback; output to files (a full pipe would block them)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runs = []
    for i in range(2):
        command = train_command(config, workdir, *OVERRIDES) + [
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
            "--cpu-collectives", "gloo"]
        out, err = logs / f"{tag}.{i}.out", logs / f"{tag}.{i}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            runs.append((subprocess.Popen(command, env=environment(4), stdout=stdout, stderr=stderr), out, err))
    return runs


def finish(runs, timeout):
    """Waits for every process (killing all on timeout), asserts exit code 0; returns their stdout texts."""
    deadline = time.time() + timeout
    try:
        for process, _, err in runs:
            process.wait(timeout=max(1.0, deadline - time.time()))
            assert process.returncode == 0, err.read_text()[-3000:]
    finally:
        kill(runs)
    return [out.read_text() for _, out, _ in runs]


def kill(runs):
    for process, _, _ in runs:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_until(condition, runs, timeout=300):
    deadline = time.time() + timeout
    try:
        while not condition():
            assert all(p.poll() is None for p, _, _ in runs), [err.read_text()[-2000:] for _, _, err in runs]
            assert time.time() < deadline, f"not within {timeout} s"
            time.sleep(0.05)
    except BaseException:
        kill(runs)
        raise


def preempted_step(outputs, workdir):
    """The step both processes report; it must be the newest checkpoint, marked preempted."""
    assert all("preempted at step " in out for out in outputs), [out.splitlines()[-1:] for out in outputs]
    steps = [int(out.split("preempted at step ")[1].split("/")[0]) for out in outputs]
    assert steps[0] == steps[1] < STEPS, [out.splitlines()[-1:] for out in outputs]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == steps[0], saved
    assert Checkpointer(workdir / "checkpoints", read_only=True).read_meta(steps[0])["preempted"] is True
    return steps[0]


def losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root)
    finish(start_two(config, root / "work", root, "reference"), timeout=600)
    assert [s for s, _ in losses(root / "work")] == list(range(1, STEPS + 1))
    return config, root / "work"


def test_sigterm_to_one_process_stops_both_at_one_step_and_rerun_resumes(reference, tmp_path):
    config, reference_dir = reference
    workdir = tmp_path / "work"

    runs = start_two(config, workdir, tmp_path, "during")  # signalled while training
    wait_until(lambda: read_metrics(workdir) and read_metrics(workdir)[-1]["step"] >= 5, runs)
    runs[1][0].send_signal(signal.SIGTERM)  # process 1 only
    first = preempted_step(finish(runs, timeout=180), workdir)
    assert first >= 5
    assert [s for s, _ in losses(workdir)] == list(range(1, first + 1))

    # Signalled while the resumed run sets up (process 0 has printed, so both have installed their handler):
    # both stop before their first step and save nothing new (or, had process 1 already reached the first
    # step's agreement, after that one step).
    runs = start_two(config, workdir, tmp_path, "startup")
    wait_until(lambda: "training samples" in (tmp_path / "startup.0.out").read_text(), runs)
    runs[1][0].send_signal(signal.SIGTERM)
    second = preempted_step(finish(runs, timeout=180), workdir)
    assert second in (first, first + 1)

    outputs = finish(start_two(config, workdir, tmp_path, "end"), timeout=600)
    assert all(f"finished at step {STEPS}/{STEPS}" in out for out in outputs), outputs
    for (step, ours), (_, theirs) in zip(losses(workdir), losses(reference_dir), strict=True):
        assert abs(ours - theirs) <= 1e-5, step
