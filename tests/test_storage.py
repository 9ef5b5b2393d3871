"""Outputs as URIs: atomic writes (never a torn file, several writers at once), appends that keep what a bucket
held (gcsfs's mode "a" overwrites), and where a run keeps what it memory-maps."""

import threading

import pytest
from etils import epath

from tests.gcs_fixtures import gcs_bucket  # noqa: F401
from vlguard_jax import storage
from vlguard_jax.config import DataConfig
from vlguard_jax.data.recipes import local_folder
from vlguard_jax.data.sources import DataError


def test_writers_of_one_file_at_once_leave_one_whole_version_and_no_temporary(tmp_path):
    target = tmp_path / "deep" / "result.json"
    versions = [{"writer": i, "rows": list(range(2000))} for i in range(8)]
    threads = [threading.Thread(target=storage.write_json, args=(target, v)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.read_json(target) in versions
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_appends_keep_earlier_lines_locally_and_in_a_bucket(gcs_bucket, tmp_path):
    for root in (tmp_path, epath.Path(gcs_bucket)):
        target = root / "run" / "responses.jsonl"
        storage.append_lines(target, ['{"id": 1}', '{"id": 2}'])
        storage.append_lines(target, [])
        storage.append_lines(target, ['{"id": 3}'])
        assert storage.read_lines(target) == ['{"id": 1}', '{"id": 2}', '{"id": 3}'], root
        storage.move(target, root / "run" / "moved.jsonl")
        assert not target.exists() and len(storage.read_lines(root / "run" / "moved.jsonl")) == 3


def test_memory_mapped_data_stays_on_a_local_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert local_folder(DataConfig(), tmp_path / "run") == tmp_path / "run" / "cache"
    assert local_folder(DataConfig(), "gs://bucket/run") == tmp_path / "xdg" / "vlguard-jax"
    assert local_folder(DataConfig(cache_dir=str(tmp_path / "c")), "gs://bucket/run") == tmp_path / "c"
    with pytest.raises(DataError, match="data.cache_dir must be a local folder, not gs://bucket/cache"):
        local_folder(DataConfig(cache_dir="gs://bucket/cache"), tmp_path / "run")
