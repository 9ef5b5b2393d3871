"""A Cloud Storage emulator on 127.0.0.1 for `gs://` paths: gcsfs (through `etils.epath`) and tensorstore (Orbax)
both talk to it. Started by the test that asks for it, stopped after."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "vlguard-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
    """What a process needs to reach the emulator: gcsfs, tensorstore, and no probe for GCE credentials (which
    waits on a metadata server that is not there)."""
    url = f"http://127.0.0.1:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "NO_GCE_CHECK": "True"}


@pytest.fixture
def gcs_bucket(monkeypatch, tmp_path):
    """`gs://BUCKET`, served in memory for this test; its environment is set here and for subprocesses."""
    if importlib.util.find_spec("gcp_storage_emulator") is None or importlib.util.find_spec("gcsfs") is None:
        pytest.skip("gcp-storage-emulator or gcsfs is not installed (pip install -e '.[test]')")
    port = _free_port()
    log = open(tmp_path / "gcs-emulator.log", "w")
    emulator = os.path.join(os.path.dirname(__file__), "gcs_emulator.py")
    server = subprocess.Popen([sys.executable, emulator, "start", "--host", "127.0.0.1", "--port", str(port),
                               "--in-memory", "--default-bucket", BUCKET, "-q"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/{BUCKET}", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not start: {(tmp_path / 'gcs-emulator.log').read_text()}")
                time.sleep(0.2)
        for key, value in emulator_env(port).items():
            monkeypatch.setenv(key, value)
        _forget_filesystems()
        yield f"gs://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        _forget_filesystems()


def _forget_filesystems() -> None:
    """gcsfs caches its filesystem (and the endpoint it read from the environment) per process."""
    try:
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
    except ImportError:
        pass


def local_gs_folders(root) -> list[str]:
    """Folders named `gs:` under `root`: what a `pathlib.Path('gs://…')` makes by mistake."""
    return [str(p) for p, _, _ in os.walk(root) if os.path.basename(p) == "gs:"]
