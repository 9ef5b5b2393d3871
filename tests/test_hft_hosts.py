"""The hft grid on 2 processes × 4 devices (gloo, loopback): every process trains and evaluates over all 8 devices
and process 0 alone writes; killed with -9 on both processes after the first cell and re-run, the grid finishes
with exactly the results and responses of an uninterrupted run."""

import sys

import pytest
import yaml

from host_fixtures import Host, finish, kill, start, wait_until
from vlguard_jax.data import synthetic_text
from vlguard_jax.data.vocab import build_tokenizer

pytestmark = pytest.mark.slow

SIZES = synthetic_text.SyntheticTextConfig(num_task_train=64, num_task_test=16, num_pairs=16, num_questions=16,
                                           num_refusals=8, num_align=0, num_align_refusals=0, num_align_sentiment=0)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("hft_hosts")
    paths = synthetic_text.generate(root / "data", SIZES)
    build_tokenizer(synthetic_text.corpus(SIZES), root / "tokenizer", vocab_size=1024)
    raw = {
        "model": {"tokenizer": str(root / "tokenizer"), "architecture": {
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}},
        "data": {"mixture": "harmful_finetune", "template": "alpaca", "max_length": 128, "buckets": [128],
                 "task": str(paths["sst2_train"]), "task_format": "sst2", "num_task": 48,
                 "poison": str(paths["pairs"]), "safety": str(paths["refusals"]), "safety_format": "alpaca"},
        "train": {"mode": "lora", "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0}, "epochs": 1, "max_steps": 4,
                  "global_batch_size": 8, "checkpoint_every": 2, "log_every": 1,
                  "optimizer": {"learning_rate": 1.0e-3, "warmup_ratio": 0.0}},
        "hft": {"poison_ratios": [0.25], "defences": ["none", "vlguard"], "safety_count": 8,
                "test": str(paths["sst2_validation"]), "harmful": str(paths["questions"]), "max_new_tokens": 6,
                "batch_size": 8},
        "mesh": {"data": 2, "fsdp": 4},
    }
    path = root / "hft.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def two_processes(config, out, logs) -> list[Host]:
    command = [sys.executable, "-m", "vlguard_jax.cli", "hft", "--config", str(config), "--out", str(out)]
    return start([command, command], logs)


def results(out) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for pattern in ("*/result.json", "*/eval/*/responses.jsonl")
            for p in sorted(out.glob(pattern))}


def test_two_hosts_run_the_grid_and_resume_after_kill_9(config, tmp_path):
    whole = tmp_path / "whole"
    printed = [out for out, _ in finish(two_processes(config, whole, tmp_path / "whole-logs"))]
    assert "| vlguard | 0.25 |" in printed[0] and "| vlguard |" not in printed[1]  # process 0 reports
    reference = results(whole)
    assert sorted(k for k in reference if k.endswith("result.json")) == ["p0.25_none/result.json",
                                                                          "p0.25_vlguard/result.json"]
    cut = tmp_path / "cut"
    hosts = two_processes(config, cut, tmp_path / "cut-logs")
    wait_until((cut / "p0.25_none" / "result.json").exists, hosts)
    kill(hosts)  # both hosts die in the middle of the grid
    assert not (cut / "p0.25_vlguard" / "result.json").exists()
    finish(two_processes(config, cut, tmp_path / "resumed-logs"))
    assert results(cut) == reference
    assert (cut / "summary.json").read_bytes() == (whole / "summary.json").read_bytes()
