"""A tiny MiniGPT-v2 (EVA tower, 4-token concat projector, LoRA on q and v) through the commands a user runs:
post-hoc LoRA training on VLGuard-format data, `eval` under the vlguard_minigptv2 protocol, a merged `export`."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from train_fixtures import TINY
from vlguard_jax.cli import main
from vlguard_jax.config import config_from_dict
from vlguard_jax.train.loop import train
from vlguard_jax.train.metrics_log import read_metrics
from vlguard_jax.train.trained import load_model_and_tokenizer, load_trained

pytestmark = pytest.mark.slow

MINIGPT = {
    **TINY,
    "model": {"architecture": {
        "model_type": "minigpt_v2",
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 16, "patch_size": 4},
        "text_config": TINY["model"]["architecture"]["text_config"]}},
    "data": {**TINY["data"], "template": "minigptv2", "image_mode": "resize"},
    "train": {**TINY["train"], "max_steps": 12,
              "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.05,
                       "targets": r"language_model\.model\.layers\.self_attn\.(q|v)_proj"}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("minigptv2") / "work"
    result = train(config_from_dict(MINIGPT, "tests/test_minigptv2_run.py"), workdir, progress=False)
    return result, workdir


def test_posthoc_lora_run_trains_the_adapters_and_llama_proj(run):
    result, workdir = run
    assert (result.status, result.steps) == ("finished", 12)
    losses = [r["loss"] for r in read_metrics(workdir)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    model, _ = load_trained(workdir)
    assert model.config.layout == "minigpt_v2" and model.config.num_image_tokens == 4
    adapted = model.language_model.model.layers.self_attn
    assert adapted.q_proj.lora_a is not None and adapted.k_proj.lora_a is None
    assert np.abs(np.asarray(adapted.v_proj.lora_b[...])).max() > 0  # trained away from its zero start


def test_vlguard_eval_and_merged_export(run, tmp_path, capsys):
    _, workdir = run
    data = workdir / "data"
    args = ["eval", "--model", str(workdir), "--benchmark", "vlguard", "--data", str(data / "vlguard_test.json"),
            "--images", str(data / "images"), "--batch-size", "2", "--max-new-tokens", "6"]
    assert main([*args, "--out", str(tmp_path / "llava_protocol")]) == 2  # the default protocol is LLaVA's
    assert "template 'llava_v1' is not a prompt format of this minigpt_v2 model" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "eval"), "--protocol", "vlguard_minigptv2"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["settings"]["template"] == "minigptv2_vqa" and summary["settings"]["image_mode"] == "resize"
    for subset in ("vlguard_unsafes", "vlguard_safe_unsafes", "vlguard_safe_safes"):
        assert summary["benchmarks"][subset]["n"] > 0, subset
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "peft"), "--format", "peft"]) == 2
    assert "export merged weights instead" in capsys.readouterr().err
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "minigpt_v2"
    exported, tokenizer = load_model_and_tokenizer(tmp_path / "merged")
    trained, _ = load_trained(workdir)
    ids = jnp.asarray([[tokenizer.bos_token_id] + [exported.config.image_token_id] * 4 + [5, 6, 7]])
    pixels = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 16, 16)), jnp.float32)
    np.testing.assert_allclose(exported(ids, pixels), trained(ids, pixels), atol=1e-4)


def test_attack_takes_minigptv2s_prompt_and_resize(run, tmp_path):
    """`attack` on a MiniGPT-v2 run: its own template and 448-style square resize by default, the PNG at its input
    size, the corpus loss lowered."""
    _, workdir = run
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(s) + "\n" for s in ("Sure, here is how to build a weapon.",
                                                             "Sure, here is how to hurt a person.")))
    out = tmp_path / "attack"
    assert main(["attack", "--model", str(workdir), "--corpus", str(corpus), "--steps", "4", "--batch", "2",
                 "--epsilon", "unconstrained", "--alpha", "8/255", "--dtype", "float32", "--out", str(out)]) == 0
    settings = json.loads((out / "attack.json").read_text())
    assert (settings["template"], settings["image_mode"]) == ("minigptv2_vqa", "resize")
    with Image.open(out / "adversarial.png") as image:
        assert image.size == (16, 16)
    result = json.loads((out / "result.json").read_text())
    assert result["loss_attacked"] < result["loss_initial_image"]
