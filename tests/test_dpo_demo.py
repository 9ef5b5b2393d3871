"""`vlguard-jax demo --dpo` at reduced size: the instruction-tuned tiny LLaVA, DPO (with the RPO anchor) on the
synthetic pairs from it, post-hoc SFT from it for comparison; the DPO run learns the preference (its logged rewards)
and lowers the ASR, and `summary.json` holds the three stages' metrics."""

import json
from pathlib import Path

import pytest

from vlguard_jax import dpo_demo
from vlguard_jax.cli import main
from vlguard_jax.demo import METRICS

SCALE = 0.25  # 100 train images (250 pairs), 50 test images, 300 instruction samples: ~1.5 min on 2 cores


def test_the_dpo_stage_trains_on_the_synthetic_pairs_from_the_base():
    paths = {"pairs": Path("data/pairs.jsonl"), "images": Path("data/images")}
    config = dpo_demo.dpo_config(paths, Path("instruct/hf"), seed=2)
    assert (config.data.mixture, config.data.preference, config.data.preference_images) == \
        ("preference", "data/pairs.jsonl", "data/images")
    assert (config.model.path, config.model.architecture) == ("instruct/hf", None)
    train = config.train
    assert (train.mode, train.objective, train.seed, config.data.seed) == ("lora", "dpo", 2, 2)
    assert (train.preference.beta, train.preference.rpo_alpha) == (dpo_demo.DPO_BETA, dpo_demo.DPO_RPO_ALPHA)
    assert (train.lora.rank, train.epochs, train.optimizer.learning_rate) == \
        (dpo_demo.DPO_LORA["rank"], dpo_demo.DPO_EPOCHS, dpo_demo.DPO_LEARNING_RATE)
    assert train.log_every == 1  # a reward curve point per step


def test_dpo_is_one_demo_variant_among_the_others(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--dpo", "--audit"])
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_dpo_learns_the_preference_and_lowers_the_asr(tmp_path):
    assert main(["demo", "--dpo", "--out", str(tmp_path), "--scale", str(SCALE)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["before", "posthoc", "dpo"] == list(dpo_demo.STAGES)
    assert all(set(metrics) == set(METRICS) for metrics in summary.values())
    before, after = summary["before"], summary["dpo"]
    assert before["unsafe_asr"] >= 80 and before["safe_unsafe_asr"] >= 80  # the harmful data made it unsafe
    assert before["unsafe_asr"] - after["unsafe_asr"] >= 30
    assert before["safe_unsafe_asr"] - after["safe_unsafe_asr"] >= 50
    assert after["safe_safe_refusal_rate"] <= 20  # not by refusing everything

    records = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    pairs = (tmp_path / "data" / "pairs.jsonl").read_text().splitlines()
    assert len(records) == dpo_demo.DPO_EPOCHS * (len(pairs) // dpo_demo.DPO_BATCH)  # every step logged
    assert records[0]["reward_accuracy"] == 0 and abs(records[0]["reward_margin"]) < 1e-3  # policy = reference
    mean = lambda key, steps: sum(r[key] for r in steps) / len(steps)
    early, late = records[:5], records[-5:]
    assert mean("reward_accuracy", late) >= mean("reward_accuracy", early) + 0.2
    assert mean("reward_margin", late) > 1 and mean("reward_margin", late) > mean("reward_margin", early)
    assert mean("reward_chosen", late) > 0 > mean("reward_rejected", late)  # chosen answers likelier, rejected less
    assert mean("loss", late) < mean("loss", early) / 2
    manifest = json.loads((tmp_path / "dpo" / "mixture.json").read_text())
    assert manifest["kind"] == "preference" and len(manifest["parts"]["preference"]) == len(pairs) == 250
    assert (tmp_path / "dpo" / "loss.png").exists() and (tmp_path / "summary.png").exists()
    assert (tmp_path / "posthoc" / "mixture.json").exists() and (tmp_path / "eval_dpo" / "report.md").exists()
