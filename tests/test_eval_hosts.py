"""`eval` on 2 processes × 4 devices (gloo, loopback), each process with its own local `--out` as pod hosts have:
process 0 alone reads and writes its directory, so killed with -9 and re-run, whatever process 1's disk holds, its
files equal a 1-process run's; a refusal decided by process 0 stops both processes; an `openai` judge is asked
once per item, whatever the number of processes."""

import json
import shutil
import subprocess
import sys

import pytest

from eval_fixtures import random_checkpoint, vlguard_eval_args
from judge_server import JudgeServer, completion
from host_fixtures import Host, finish, kill, start, wait_until
from train_fixtures import environment

pytestmark = pytest.mark.slow

PARTS = ("vlguard_unsafes", "vlguard_safe_unsafes", "vlguard_safe_safes")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("eval_hosts"), num_test_images=24)


def command(setup, out, *extra) -> list[str]:
    return [sys.executable, "-m", "vlguard_jax.cli",
            *vlguard_eval_args(setup, out, 8, "--batch-size", "8", "--dtype", "float32", *extra)]


def two_processes(setup, outs, logs, *extra) -> list[Host]:
    """Process i writes (or would write) to `outs[i]`."""
    return start([command(setup, out, *extra) for out in outs], logs)


def results(out) -> dict:
    return {path: (out / path).read_bytes() for path in [f"{p}/responses.jsonl" for p in PARTS] + ["summary.json"]}


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_one") / "out"
    subprocess.run(command(setup, out), env=environment(1), check=True, capture_output=True, timeout=600)
    return out


def test_process_0_decides_and_resumes_whatever_process_1_disk_holds(setup, one_process, tmp_path):
    reference = results(one_process)
    total = sum(len(reference[f"{p}/responses.jsonl"].splitlines()) for p in PARTS)
    assert total == 36  # 12 unsafe + 12 safe images × 2 questions
    ours, theirs = tmp_path / "host0", tmp_path / "host1"
    hosts = two_processes(setup, [ours, theirs], tmp_path / "cut")
    wait_until((ours / PARTS[0] / "responses.jsonl").exists, hosts)  # killed once the first chunk is written
    kill(hosts)
    written = sum(len((ours / p / "responses.jsonl").read_text().splitlines())
                  for p in PARTS if (ours / p / "responses.jsonl").exists())
    assert 0 < written < total, written
    assert not theirs.exists()  # process 1 never writes
    shutil.copytree(one_process, theirs)  # its disk now says every prompt is done: it must not matter
    finish(two_processes(setup, [ours, theirs], tmp_path / "resumed"))
    assert results(ours) == reference
    assert results(theirs) == reference and not (theirs / "judge_cache").exists()  # untouched

    shutil.rmtree(theirs)  # other settings: refused on process 0, and so on both, before any model loads
    errors = [err for _, err in finish(two_processes(setup, [ours, theirs], tmp_path / "refused", "--max-new-tokens",
                                                     "3"), code=2)]
    assert f"error: {ours}/run.json: this directory holds an evaluation with other settings (max_new_tokens: 8 → " \
           f"3)" in errors[0]
    assert "this directory holds an evaluation with other settings (max_new_tokens: 8 → 3)" in errors[1]
    assert not theirs.exists() and results(ours) == reference


def test_an_openai_judge_is_asked_once_per_item_on_two_processes(setup, tmp_path):
    def safe(server, body):
        with server.lock:
            server.attempts[body["messages"][-1]["content"]] += 1
        return completion("safe")

    ours, theirs = tmp_path / "host0", tmp_path / "host1"
    with JudgeServer(safe) as server:
        finish(two_processes(setup, [ours, theirs], tmp_path / "logs", "--judge", "openai", "--judge-url", server.url,
                             "--judge-model", "guard"))
    judged = [json.loads(line) for p in PARTS for line in (ours / p / "responses.jsonl").read_text().splitlines()
              if "judge_label" in json.loads(line)]
    assert len(judged) == 24  # the two harm subsets (the safe-safe one is scored by its refusal keywords)
    assert sum(server.attempts.values()) == len(server.attempts) == len({(j["prompt"], j["response"])
                                                                          for j in judged})
    assert len(list((ours / "judge_cache").iterdir())) == len(server.attempts) and not theirs.exists()
