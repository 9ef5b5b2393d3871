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


@pytest.mark.slow
def test_sweep_holding_out_privacy_on_the_demo_model(tmp_path, capsys):
    """The paper's Fig. 5 setting at a tiny scale: no run trains on privacy's safety records, and each row scores the
    Unsafe subset per harm category of the test data, the held-out one included; another hold-out is refused."""
    from vlguard_jax.cli import main

    sweep = tmp_path / "sweep"
    assert main(["sweep", "--out", str(sweep), "--scale", "0.1", "--fractions", "1",
                 "--holdout-category", "privacy"]) == 0
    train = json.loads((sweep / "data" / "vlguard_train.json").read_text())
    privacy = {r["id"] for r in train if r.get("harmful_category") == "privacy"}
    assert privacy  # the synthetic data has the category held out
    manifest = json.loads((sweep / "fraction1_seed0" / "mixture.json").read_text())
    assert sorted(manifest["excluded"]["removed"]["safety"]) == sorted(privacy)
    assert not privacy & set(manifest["parts"]["safety"])
    assert len(manifest["parts"]["safety"]) == len(train) - len(privacy)

    test = json.loads((sweep / "data" / "vlguard_test.json").read_text())
    labels = {r["id"]: f"{r['harmful_category']}/{r['harmful_subcategory']}" for r in test if not r["safe"]}
    responses = [json.loads(line) for line in
                 (sweep / "eval_fraction1_seed0" / "vlguard_unsafes" / "responses.jsonl").read_text().splitlines()]
    expected = {}
    for label in sorted(set(labels.values())):
        mine = [r for r in responses if labels[r["id"]] == label]
        expected[label] = {"n": len(mine), "value": round(100 * sum(not r["refusal"] for r in mine) / len(mine), 2)}
    written = json.loads((sweep / "sweep.json").read_text())
    (row,) = written["rows"]
    assert row["unsafe_asr_by_category"] == expected and "privacy/personal data" in expected
    assert row["safety_samples"] == len(train) - len(privacy) and written["settings"]["holdout_category"] == "privacy"
    table = (sweep / "sweep.md").read_text()
    assert "Unsafe ASR % per harm category; held out of the safety data: privacy" in table
    assert "| privacy/personal data (held out) |" in table

    capsys.readouterr()
    assert main(["sweep", "--out", str(sweep), "--scale", "0.1", "--fractions", "1",
                 "--holdout-category", "risky behavior"]) == 2
    assert ("train of fraction1_seed0: data.safety_exclude_categories: ['privacy'] → ['risky behavior']"
            in capsys.readouterr().err)


def test_a_held_out_category_is_pinned_in_each_cell_and_must_name_safety_records(tmp_path):
    from vlguard_jax.data import synthetic
    from vlguard_jax.data.sources import DataError
    from vlguard_jax.evaluate.runner import EvalConfig
    from vlguard_jax.sweep import sweep_cells

    paths = synthetic.generate(tmp_path / "data", synthetic.SyntheticConfig(image_size=16, num_train_images=12,
                                                                            num_test_images=1, num_instruct=2))
    config = config_from_dict({"data": {"safety": str(paths["train"]), "helpful": str(paths["instruct"])}}, "test")
    cells = sweep_cells(tmp_path / "sweep", [(1.0, 0, "fraction1_seed0")], 1.0, config, str(paths["test"]),
                        EvalConfig(PROTOCOLS["vlguard"]), "privacy")
    assert cells[0].parts[0].settings["data.safety_exclude_categories"] == ["privacy"]
    with pytest.raises(DataError, match=r"the sweep's held-out categories \(.*vlguard_train.json\): the harm "
                                        r"category 'weapons' names no record there; known: discrimination, "):
        run_sweep(tmp_path / "sweep", fractions=[1.0], config=config, test_json=str(paths["test"]),
                  images=str(paths["images"]), holdout_category="weapons")
    assert not (tmp_path / "sweep" / "fraction1_seed0").exists()  # refused before any training
