"""Processes of one job on loopback (gloo, coordinator on 127.0.0.1), as the hosts of a pod: each process's stdout
and stderr go to files, never pipes (an unread pipe stalls its process, and with it every other process at the
next collective)."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from pathlib import Path

from train_fixtures import environment


@dataclasses.dataclass
class Host:
    process: subprocess.Popen
    out: Path  # its stdout
    err: Path  # its stderr

    def text(self) -> tuple[str, str]:
        return self.out.read_text(), self.err.read_text()


def start(commands: list[list[str]], logs: Path, envs: list[dict] | None = None, devices: int = 4) -> list[Host]:
    """Process i runs `commands[i]` as process i of len(commands), with `envs[i]` (default: `devices` CPUs)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logs.mkdir(parents=True, exist_ok=True)
    hosts = []
    for i, command in enumerate(commands):
        out, err = logs / f"process{i}.out", logs / f"process{i}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen(
                command + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(len(commands)),
                           "--process-id", str(i), "--cpu-collectives", "gloo"],
                env=envs[i] if envs else environment(devices), stdout=stdout, stderr=stderr, text=True)
        hosts.append(Host(process, out, err))
    return hosts


def wait_until(condition, hosts: list[Host], timeout: float = 600) -> None:
    """Polls `condition()` while every process runs; fails with process 0's stderr if one exits first."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline and all(h.process.poll() is None for h in hosts), hosts[0].err.read_text()
        time.sleep(0.05)


def kill(hosts: list[Host]) -> None:
    for host in hosts:
        host.process.kill()
        host.process.wait()


def finish(hosts: list[Host], code: int = 0, timeout: float = 600) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr) once all exit with `code`; on a failure none is left running."""
    try:
        for host in hosts:
            host.process.wait(timeout=timeout)
    finally:
        for host in hosts:
            host.process.kill()
    for host in hosts:
        assert host.process.returncode == code, host.err.read_text()[-3000:]
    return [host.text() for host in hosts]
