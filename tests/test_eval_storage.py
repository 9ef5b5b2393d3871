"""`eval --out gs://…` (a Cloud Storage emulator on 127.0.0.1): every output goes through `storage`, no local `gs:`
folder appears, and killed with -9 and re-run it writes the bytes of a local run; the fingerprint and a judge cache
live in a bucket as in a folder."""

import json
import subprocess
import sys
import time

import pytest

from eval_fixtures import random_checkpoint, vlguard_eval_args
from tests.gcs_fixtures import gcs_bucket, local_gs_folders  # noqa: F401
from train_fixtures import environment
from vlguard_jax import storage
from vlguard_jax.config import ConfigError
from vlguard_jax.evaluate import fingerprint
from vlguard_jax.evaluate.judges.cache import ReplyCache
from vlguard_jax.evaluate.report import compare

PARTS = ("vlguard_unsafes", "vlguard_safe_unsafes", "vlguard_safe_safes")


def test_fingerprint_judge_cache_and_compare_in_a_bucket(gcs_bucket, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    out = storage.path(f"{gcs_bucket}/eval")
    fingerprint.claim(out, {"model": "a", "dtype": "bfloat16"})
    assert fingerprint.check(out, {"model": "a", "dtype": "bfloat16"})
    with pytest.raises(ConfigError, match=f"{out}/run.json: this directory holds an evaluation with other settings "
                                          f"\\(dtype: 'bfloat16' → 'float32'\\)"):
        fingerprint.claim(out, {"model": "a", "dtype": "float32"})
    storage.append_lines(out / "advbench" / "responses.jsonl", ['{"id": "1"}'])
    fingerprint.clear(out)
    assert not fingerprint.check(out, {"model": "b"}) and not list(out.glob("*/responses.jsonl"))

    cache = ReplyCache(out / "judge_cache")
    assert cache.get("k") is None
    cache.put("k", {"choices": []})
    assert ReplyCache(out / "judge_cache").get("k") == {"choices": []}

    for name, n in (("before", 10), ("after", 9)):
        storage.write_json(out / name / "summary.json", {"settings": {}, "benchmarks": {
            "advbench": {"n": n, "metric": "asr", "value": 50.0}}})
    with pytest.raises(ConfigError, match=f"advbench \\(n 10 in {out}/before, 9 in {out}/after\\)"):
        compare(out / "before", out / "after")
    assert "| advbench | ASR % | 50.0 | 50.0 | +0.00 |" in compare(out / "before", out / "after", True)
    assert local_gs_folders(tmp_path) == []


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("eval_storage"), num_test_images=12)


@pytest.mark.slow
def test_eval_into_a_bucket_killed_and_resumed_writes_a_local_runs_bytes(setup, gcs_bucket, tmp_path):  # noqa: F811
    def command(out):
        return [sys.executable, "-m", "vlguard_jax.cli", *vlguard_eval_args(setup, out, 6, "--dtype", "float32")]

    subprocess.run(command(tmp_path / "local"), env=environment(1), check=True, capture_output=True, timeout=600)
    out = storage.path(f"{gcs_bucket}/run")
    process = subprocess.Popen(command(out), env=environment(1), cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not storage.read_lines(out / PARTS[0] / "responses.jsonl"):  # killed once the first chunk is written
        assert time.time() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.kill()
    process.wait()
    written = sum(len(storage.read_lines(out / part / "responses.jsonl")) for part in PARTS)
    total = sum(len((tmp_path / "local" / part / "responses.jsonl").read_text().splitlines()) for part in PARTS)
    assert 0 < written < total, written
    resumed = subprocess.run(command(out), env=environment(1), cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for part in PARTS:
        assert (out / part / "responses.jsonl").read_bytes() == (tmp_path / "local" / part / "responses.jsonl"
                                                                 ).read_bytes(), part
    assert storage.read_json(out / "summary.json") == json.loads((tmp_path / "local" / "summary.json").read_text())
    assert (out / "report.md").exists() and local_gs_folders(tmp_path) == []
