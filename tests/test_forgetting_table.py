"""`vlguard-jax table1` (VLGuard Table 1): a tiny LLaMA and a tiny llava-hf VLLM built from its text weights, on
slices of the real AdvBench, XSTest, MMLU and AlpacaEval (its pairwise judge served on 127.0.0.1). Each cell equals
the separate `eval` run's summary.json, helpfulness is the mean of MMLU and AlpacaEval (n/a, never zero, when one
is missing), and wrong models or settings are refused before any model loads."""

import csv
import json

import pytest
import torch
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from data_fixtures import shared_file
from hf_fixtures import VARIANTS, save_llama, scale_weights
from judge_server import JudgeServer, completion
from vlguard_jax.cli import main
from vlguard_jax.data.vocab import IMAGE_PLACEHOLDER, build_tokenizer
from vlguard_jax.evaluate.forgetting_report import COLUMNS, markdown, row

MAX_NEW_TOKENS = "4"


def ranking(server, body):
    """AlpacaEval's ranking: output_1 first when the filled prompt's length is even (so it follows the answers)."""
    text = body["messages"][-1]["content"]
    first = len(text) % 2 == 0
    return completion(str([{"model": "model_1", "rank": 1 if first else 2},
                           {"model": "model_2", "rank": 2 if first else 1}]))


def slice_csv(source, target, keep):
    with source.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for i, r in enumerate(rows) if keep(i, r)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return kept


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A benchmarks root of small slices of the real files, laid out as ../shared/benchmarks; the LLM and the VLLM
    built from it (same text weights), each with a tokenizer trained on those slices."""
    root = tmp_path_factory.mktemp("table1")
    data = root / "benchmarks"
    texts = [r["goal"] for r in slice_csv(shared_file("advbench/harmful_behaviors.csv"),
                                          data / "advbench/harmful_behaviors.csv", lambda i, r: i < 3)]
    xstest = slice_csv(shared_file("xstest/xstest_prompts.csv"), data / "xstest/xstest_prompts.csv",
                       lambda i, r: r["id"] in {"1", "2", "3", "26", "27"})  # 3 safe, 2 unsafe
    texts += [r["prompt"] for r in xstest]
    mmlu = shared_file("mmlu")
    for subject in ("anatomy", "astronomy", "virology"):
        dev = slice_csv(mmlu / f"dev/{subject}_dev.csv", data / f"mmlu/dev/{subject}_dev.csv", lambda i, r: True)
        test = slice_csv(mmlu / f"test/{subject}_test.csv", data / f"mmlu/test/{subject}_test.csv",
                         lambda i, r: i < 3)
        texts += [" ".join(r.values()) for r in dev + test]
    alpaca = json.loads(shared_file("alpaca_eval/gpt4_1106_preview_model_outputs.json").read_text())[:8]
    (data / "alpaca_eval").mkdir()
    (data / "alpaca_eval/gpt4_1106_preview_model_outputs.json").write_text(json.dumps(alpaca))
    texts += [r["instruction"] for r in alpaca]

    tokenizer = build_tokenizer(texts, vocab_size=500)
    llm, vllm = root / "vicuna", root / "llava"
    tokenizer.save_pretrained(llm)
    text_model = save_llama(llm, tied=False, vocab=len(tokenizer), seed=4)
    torch.manual_seed(5)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VARIANTS["mha"]["vision"]), text_config=text_model.config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
                         **VARIANTS["mha"]["llava"])
    llava = scale_weights(LlavaForConditionalGeneration(config).eval())  # its tower and projector
    llava.model.language_model.load_state_dict(text_model.model.state_dict())
    llava.lm_head.load_state_dict(text_model.lm_head.state_dict())
    llava.save_pretrained(vllm)
    tokenizer.save_pretrained(vllm)
    return root, data, llm, vllm


def table_args(setup, server, out, *extra):
    root, data, llm, vllm = setup
    return ["table1", "--llm", f"vicuna={llm}", "--vllm", f"llava={vllm}", "--data", str(data), "--out", str(out),
            "--judge-url", server.url, "--judge-model", "fake-judge", "--max-new-tokens", MAX_NEW_TOKENS,
            "--batch-size", "4", "--dtype", "float32", *extra]


def eval_args(setup, server, model, out, *protocol):
    _, data, _, _ = setup
    files = ("advbench/harmful_behaviors.csv", "xstest/xstest_prompts.csv", "mmlu",
             "alpaca_eval/gpt4_1106_preview_model_outputs.json")
    return ["eval", "--model", str(model), "--benchmark", "advbench,xstest,mmlu,alpaca_eval",
            *[arg for file in files for arg in ("--data", str(data / file))], "--out", str(out),
            "--judge-url", server.url, "--judge-model", "fake-judge", "--max-new-tokens", MAX_NEW_TOKENS,
            "--batch-size", "4", "--dtype", "float32", *protocol]


def test_each_cell_equals_a_separate_eval_run(setup, tmp_path, capsys):
    _, _, llm, vllm = setup
    out = tmp_path / "table"
    with JudgeServer(ranking) as server:
        assert main(table_args(setup, server, out)) == 0
        printed = capsys.readouterr().out
        assert main(eval_args(setup, server, llm, tmp_path / "eval_vicuna", "--template", "vicuna_v1")) == 0
        assert main(eval_args(setup, server, vllm, tmp_path / "eval_llava")) == 0
    table = json.loads((out / "table1.json").read_text())
    assert [(r["model"], r["kind"], r["protocol"]["protocol"], r["protocol"]["template"]) for r in table["rows"]] == [
        ("vicuna", "llm", "vlguard", "vicuna_v1"), ("llava", "vllm", "vlguard", "llava_v1")]
    values = {}
    for r in table["rows"]:
        separate = tmp_path / f"eval_{r['model']}"
        # the same settings, recorded alike: the table's folder is an `eval` folder
        assert (out / r["model"] / "run.json").read_text() == (separate / "run.json").read_text()
        summary = json.loads((separate / "summary.json").read_text())
        assert r["protocol"] == summary["settings"]
        for subset in COLUMNS:
            cell, expected = r["cells"][subset], summary["benchmarks"][subset]
            assert (cell["value"], cell["n"], cell["metric"]) == (expected["value"], expected["n"], expected["metric"])
        assert {subset: r["cells"][subset]["n"] for subset in COLUMNS} == {
            "advbench": 3, "advbench_suffix": 3, "xstest_safe": 3, "xstest_unsafe": 2, "mmlu": 9, "alpaca_eval": 8}
        mmlu, alpaca = r["cells"]["mmlu"]["value"], r["cells"]["alpaca_eval"]["value"]
        assert r["cells"]["language_helpfulness"]["value"] == (mmlu + alpaca) / 2
        values[r["model"]] = [r["cells"][s]["value"] for s in (*COLUMNS, "language_helpfulness")]
    assert values["vicuna"] != values["llava"]  # the rows differ (their templates): a swap would show
    assert table["rows"][1]["cells"]["alpaca_eval"]["judge"] == "openai:alpaca_eval"
    text = (out / "table1.md").read_text()
    assert text in printed
    for name, numbers in values.items():
        assert any(line.startswith(f"| {name} |") and line.endswith(" | ".join(f"{v:.2f}" for v in numbers) + " |")
                   for line in text.splitlines())
    assert "| N | | | 3 | 3 | 3 | 2 | 9 | 8 | |" in text

    with JudgeServer(ranking) as server:  # other settings into the same folders: refused before any model loads
        assert main(table_args(setup, server, out, "--dtype", "bfloat16")) == 2
    assert "holds an evaluation with other settings" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (lambda llm, vllm: ["--vllm", f"base={llm}"], "is a text-only language model; give it as --llm base="),
    (lambda llm, vllm: ["--llm", f"tuned={vllm}"], "is a vision-language model (llava); give it as --vllm tuned="),
    (lambda llm, vllm: ["--llm", f"gone={llm.parent / 'absent'}"], "not a checkpoint directory (no config.json)"),
    (lambda llm, vllm: ["--llm", f"a={llm}", "--vllm", f"a={vllm}"], "model name 'a': each names a folder"),
])
def test_wrong_models_are_refused_before_loading(setup, tmp_path, capsys, flags, message):
    _, data, llm, vllm = setup
    args = ["table1", *flags(llm, vllm), "--data", str(data), "--benchmarks", "advbench", "--out", str(tmp_path)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_alpaca_eval_needs_its_judge(setup, tmp_path, capsys):
    _, data, llm, _ = setup
    assert main(["table1", "--llm", f"vicuna={llm}", "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "alpaca_eval (or leave it out of --benchmarks): the judge openai:alpaca_eval needs --judge-url" in \
        capsys.readouterr().err


def summary(**scores):
    settings = {"protocol": "vlguard", "overridden": ["template"], "template": "vicuna_v1", "image_mode": "crop",
                "max_new_tokens": 256, "min_new_tokens": 1, "temperature": 0.0, "top_p": 1.0, "seed": 0,
                "judge": "keywords", "stop_strings": [], "dtype": "bfloat16"}
    return {"settings": settings, "benchmarks": {name: {"n": n, "metric": "x", "value": value, "skipped": 0}
                                                 for name, (value, n) in scores.items()}}


def test_helpfulness_is_na_never_zero_when_a_part_is_missing():
    full = row("a", "llm", "A", summary(mmlu=(40.0, 10), alpaca_eval=(25.5, 8), advbench=(0.0, 5)))
    no_alpaca = row("b", "vllm", "B", summary(mmlu=(40.0, 10), advbench=(12.5, 8)))
    undecided = row("c", "vllm", "C", summary(mmlu=(40.0, 10), alpaca_eval=(None, 8)))
    assert full["cells"]["language_helpfulness"]["value"] == 32.75
    assert no_alpaca["cells"]["alpaca_eval"] == {"value": None, "n": None}
    assert no_alpaca["cells"]["language_helpfulness"]["value"] is None
    assert undecided["cells"]["language_helpfulness"]["value"] is None
    lines = markdown({"benchmarks": {}, "rows": [full, no_alpaca, undecided]}).splitlines()
    assert lines[2] == "| a | llm | vlguard (template vicuna_v1) | 0.00 | n/a | n/a | n/a | 40.00 | 25.50 | 32.75 |"
    assert lines[3].endswith("| 12.50 | n/a | n/a | n/a | 40.00 | n/a | n/a |")
    assert lines[5] == "| N | | | 5 / 8 / – | – | – | – | 10 | 8 / – / 8 | |"
    assert any(line.startswith("- vlguard (template vicuna_v1): protocol vlguard (changed from the preset: "
                               "template): template vicuna_v1") for line in lines)
