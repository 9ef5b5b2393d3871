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
    """WORKDIR/loss.png: the loss; a preference run's beside its rewards (chosen, rejected, margin) and accuracy."""
    records = read_metrics(workdir)
    if not records:
        return None
    steps = [r["step"] for r in records]
    preference = "reward_accuracy" in records[0]
    fig, axes = storage.figure(width=12 if preference else 6, columns=2 if preference else 1)
    ax = axes[0] if preference else axes
    ax.plot(steps, [r["loss"] for r in records])
    ax.set_ylabel("loss (pair mean)" if preference else "loss (token mean)")
    ax.set_title(storage.path(workdir).name)
    if preference:
        for key in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"):
            axes[1].plot(steps, [r[key] for r in records], label=key.removeprefix("reward_"))
        axes[1].set_title("implicit rewards β·(log π − log π_ref) and accuracy")
        axes[1].legend()
    for each in (axes if preference else [axes]):
        each.set_xlabel("step")
        each.grid(alpha=0.3)
    return storage.save_figure(fig, storage.path(workdir) / "loss.png")
