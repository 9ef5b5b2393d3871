"""A very small training config and helpers to run `vlguard-jax train` in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

TINY = {
    "model": {"architecture": {
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}}},
    "data": {"synthetic": True, "synthetic_options": {"image_size": 16, "num_train_images": 16,
                                                      "num_test_images": 2, "num_instruct": 48},
             "mixture": "posthoc", "num_helpful": 16, "max_length": 256, "buckets": [256]},
    "train": {"mode": "lora", "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.1}, "epochs": 8, "max_steps": 20,
              "global_batch_size": 8, "log_every": 1, "checkpoint_every": 4,
              "optimizer": {"learning_rate": 1.0e-3, "projector_learning_rate": 1.0e-3, "warmup_ratio": 0.1}},
}


def write_config(directory: Path, config: dict = TINY) -> Path:
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(config: Path, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "vlguard_jax.cli", "train", "--config", str(config), "--workdir", str(workdir),
            *overrides]


def environment(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run(command: list[str], devices: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=environment(devices), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
