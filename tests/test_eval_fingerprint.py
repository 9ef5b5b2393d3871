"""`eval --out` holds one evaluation: OUT/run.json refuses a re-run with other settings unless `--overwrite`."""

import json

import pytest

from eval_fixtures import random_checkpoint, vlguard_eval_args
from vlguard_jax.cli import main
from vlguard_jax.config import ConfigError
from vlguard_jax.evaluate import fingerprint
from vlguard_jax.evaluate.protocols import protocol

PARTS = ("vlguard_unsafes", "vlguard_safe_unsafes", "vlguard_safe_safes")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("eval"), num_test_images=4)


def eval_args(setup, out, *extra):
    return vlguard_eval_args(setup, out, 4, *extra)


def responses(out):
    return {part: (out / part / "responses.jsonl").read_text() for part in PARTS}


def test_other_settings_are_refused_and_overwrite_replaces(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(eval_args(setup, out)) == 0
    first = responses(out)
    assert json.loads((out / "run.json").read_text())["template"] == "llava_v1"
    capsys.readouterr()
    assert main(eval_args(setup, out, "--template", "vicuna_v1", "--max-new-tokens", "3")) == 2
    assert capsys.readouterr().err == (
        f"error: {out}/run.json: this directory holds an evaluation with other settings (template: 'llava_v1' → "
        f"'vicuna_v1'; max_new_tokens: 4 → 3); use another --out or --overwrite\n")
    assert responses(out) == first  # untouched by the refused run
    assert main(eval_args(setup, out, "--protocol", "llava")) == 2  # refused before the model loads
    assert capsys.readouterr().err == (
        f"error: {out}/run.json: this directory holds an evaluation with other settings (protocol: 'vlguard' → "
        f"'llava'; template: 'llava_v1' → 'vicuna_v1'; image_mode: 'crop' → 'pad'; min_new_tokens: 1 → 0); use "
        f"another --out or --overwrite\n")
    stale = out / "advbench" / "responses.jsonl"  # results of an earlier benchmark: cleared too
    stale.parent.mkdir()
    stale.write_text('{"id": "old"}\n')
    assert main(eval_args(setup, out, "--template", "vicuna_v1", "--max-new-tokens", "3", "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["template"] == "vicuna_v1"
    assert not stale.parent.exists() and set(json.loads((out / "summary.json").read_text())["benchmarks"]) == set(PARTS)
    for part, text in responses(out).items():
        ids = [json.loads(line)["id"] for line in text.splitlines()]
        assert len(ids) == len(set(ids)) == len(first[part].splitlines()), part


def test_same_settings_resume_and_results_without_a_record_are_refused(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(eval_args(setup, out)) == 0
    first = responses(out)
    cut = out / PARTS[0] / "responses.jsonl"
    cut.write_text("".join(first[PARTS[0]].splitlines(keepends=True)[:1]))
    assert main(eval_args(setup, out, "--batch-size", "2")) == 0  # same settings: resumes
    assert responses(out) == first
    (out / "run.json").unlink()
    capsys.readouterr()
    assert main(eval_args(setup, out)) == 2
    assert capsys.readouterr().err == (f"error: {out}: holds evaluation results but no run.json to say of what; "
                                       f"use another --out or --overwrite\n")


def test_model_identity_and_paths_are_cheap_and_spelling_free(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints" / "12.orbax-checkpoint-tmp-1").mkdir(parents=True)
    for step in ("4", "8"):
        (run / "checkpoints" / step).mkdir()
    (run / "config.yaml").write_text("{}")
    assert fingerprint.model_identity(run) == "checkpoint step 8"
    (tmp_path / "config.json").write_text("{}")
    assert fingerprint.model_identity(tmp_path) == "config.json sha256 44136fa355b3678a"
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.json"
    data.write_text("[]")
    one = fingerprint.describe("./run", ["jsonl"], ["d.json"], None, protocol("vlguard"), "float32")
    fingerprint.claim(tmp_path / "out", one)
    fingerprint.claim(tmp_path / "out", fingerprint.describe(run, ["jsonl"], [data], None, protocol("vlguard"),
                                                             "float32"))
    with pytest.raises(ConfigError, match=r"\(judge: 'keywords' → 'keywords_normalized'\)"):
        fingerprint.claim(tmp_path / "out", {**one, "judge": "keywords_normalized"})
