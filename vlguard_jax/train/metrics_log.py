"""What a run writes as it goes: `metrics.jsonl`, TensorBoard events, and a loss-curve PNG at the end."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops lines past the restored step so that the
    file reads as one uninterrupted run."""

    def __init__(self, workdir: Path, resume_step: int):
        from tensorboardX import SummaryWriter

        self.path = workdir / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_loss(workdir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (token mean)")
    ax.set_title(Path(workdir).name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(workdir) / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
