"""What a run writes as it goes: `metrics.jsonl`, TensorBoard events, and a loss-curve PNG at the end."""

from __future__ import annotations

import json
import os
import tempfile

from vlguard_jax import storage


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops lines past the restored step so that the
    file reads as one uninterrupted run.

    TensorBoard's writer needs a local folder: for a workdir in a bucket its events are written to a temporary
    folder and copied to WORKDIR/tensorboard when the log closes (each start writes its own event file);
    `metrics.jsonl` is the record that every log step leaves in the bucket."""

    def __init__(self, workdir: storage.PathLike, resume_step: int):
        from tensorboardX import SummaryWriter

        self.path = storage.path(workdir) / "metrics.jsonl"
        kept = [line for line in storage.read_lines(self.path) if json.loads(line)["step"] <= resume_step]
        if self.path.exists():
            storage.write_text(self.path, "".join(line + "\n" for line in kept))
        self.events = storage.path(workdir) / "tensorboard"
        self.staging = None if storage.is_local(workdir) else tempfile.TemporaryDirectory()
        folder = self.staging.name if self.staging else os.fspath(self.events)
        self.tensorboard = SummaryWriter(folder, purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        storage.append_lines(self.path, [json.dumps(record)])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.tensorboard.close()
        if self.staging:
            storage.copy_folder(self.staging.name, self.events)
            self.staging.cleanup()


def read_metrics(workdir: storage.PathLike) -> list[dict]:
    return [json.loads(line) for line in storage.read_lines(storage.path(workdir) / "metrics.jsonl")]


def plot_loss(workdir: storage.PathLike) -> storage.Path | None:
    records = read_metrics(workdir)
    if not records:
        return None
    fig, ax = storage.figure()
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (token mean)")
    ax.set_title(storage.path(workdir).name)
    ax.grid(alpha=0.3)
    return storage.save_figure(fig, storage.path(workdir) / "loss.png")
