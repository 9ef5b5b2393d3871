"""`vlguard-jax sweep --config` over real-format VLGuard data: the test records have no exact answers, so helpfulness
accuracy is reported as absent (n/a), not zero, and the sweep completes; a re-run with other settings is refused."""

import dataclasses
import json

import pytest

from eval_fixtures import random_checkpoint
from vlguard_jax.config import ConfigError, config_from_dict
from vlguard_jax.evaluate.protocols import PROTOCOLS
from vlguard_jax.sweep import run_sweep


def test_sweep_over_a_real_config_with_answerless_test_records(tmp_path, capsys):
    root, paths = random_checkpoint(tmp_path, num_test_images=2, num_train_images=4, num_instruct=8)
    records = json.loads(paths["test"].read_text())
    assert any("answer" in r for r in records)  # the synthetic split has exact answers: drop them, as in the real one
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{k: v for k, v in r.items() if k != "answer"} for r in records]))
    config = config_from_dict({
        "model": {"path": str(root / "model")},
        "data": {"safety": str(paths["train"]), "safety_images": str(paths["images"]),
                 "helpful": str(paths["instruct"]), "helpful_images": str(paths["images"]), "num_helpful": 8,
                 "max_length": 256, "buckets": [256]},
        "train": {"mode": "lora", "lora": {"rank": 2, "alpha": 4.0}, "epochs": 1, "max_steps": 1,
                  "global_batch_size": 8, "checkpoint_every": 100},
    }, "test")
    sweep = tmp_path / "sweep"
    rows = run_sweep(sweep, fractions=[0.0, 1.0], config=config, test_json=str(test), images=str(paths["images"]))

    assert [(r["safety_fraction"], r["safety_samples"]) for r in rows] == [(0.0, 0), (1.0, 4)]
    for row in rows:
        assert "helpfulness_accuracy" not in row  # absent, not zero
        assert {"unsafe_asr", "safe_unsafe_asr", "safe_safe_refusal_rate"} <= row.keys()
    written = json.loads((sweep / "sweep.json").read_text())
    assert written["rows"] == rows
    assert written["settings"] == {**PROTOCOLS["vlguard"].record(), "overridden": []}
    table = (sweep / "sweep.md").read_text().splitlines()
    assert table[0].startswith("protocol vlguard: template llava_v1, image crop, greedy, 256 new tokens (at least 1)")
    assert table[-1] == (f"| 4 | 1 | 0 | {rows[1]['unsafe_asr']} | {rows[1]['safe_unsafe_asr']} | "
                         f"{rows[1]['safe_safe_refusal_rate']} | n/a |")
    assert (sweep / "sweep.png").stat().st_size > 0
    summary = json.loads((sweep / "eval_fraction1_seed0" / "summary.json").read_text())
    assert summary["settings"]["protocol"] == "vlguard"
    assert "accuracy" not in summary["benchmarks"]["vlguard_safe_safes"]

    recorded = json.loads((sweep / "cells" / "fraction1_seed0.json").read_text())
    assert recorded["train"]["data.safety_fraction"] == 1.0 and recorded["eval"]["protocol"] == "vlguard"
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=2))
    with pytest.raises(ConfigError, match=r"holds results computed with other settings:\n  train of fraction0_seed0, "
                                          r"fraction1_seed0: train.max_steps: 1 → 2\nrerun with --overwrite"):
        run_sweep(sweep, fractions=[0.0, 1.0], config=longer, test_json=str(test), images=str(paths["images"]))
