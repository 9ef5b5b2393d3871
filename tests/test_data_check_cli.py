"""`vlguard-jax data check` on a synthetic dataset with a broken image and an over-long sample."""

import json

from vlguard_jax.cli import main
from vlguard_jax.data import synthetic
from vlguard_jax.data.vocab import build_tokenizer


def test_data_check_reports_counts_skips_and_lengths(tmp_path, capsys):
    paths = synthetic.generate(tmp_path / "data", synthetic.SyntheticConfig(
        image_size=32, num_train_images=20, num_test_images=2, num_instruct=2))
    records = json.loads(paths["train"].read_text())
    (paths["images"] / records[0]["image"]).write_bytes(b"\x89PNG broken")
    records[1]["instr-resp"][0]["response"] = ""
    paths["train"].write_text(json.dumps(records))
    build_tokenizer(synthetic.corpus(), tmp_path / "tok", vocab_size=400)
    out = tmp_path / "report.json"
    assert main(["data", "check", "--format", "vlguard", "--json", str(paths["train"]), "--images",
                 str(paths["images"]), "--tokenizer", str(tmp_path / "tok"), "--max-length", "215",
                 "--num-image-tokens", "16", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["conversations"] == 18 and report["skipped"] == 2
    assert report["supervised_answers"] == sum(len(r["instr-resp"]) for r in records[2:])
    reasons = {s["id"]: s["reason"] for s in report["skips"]}
    assert "'response' is empty" in reasons[records[1]["id"]]
    assert records[0]["image"] in reasons[records[0]["id"]]
    assert sum(report["categories"].values()) == 18 and report["categories"]["safe"] == 10 - sum(
        1 for r in records[:2] if r["safe"])
    lengths = report["token_length"]
    assert 0 < lengths["p50"] <= lengths["p90"] <= lengths["max"]
    assert 0 < report["over_max_length"]["count"] < 18
    printed = capsys.readouterr().out
    assert '"conversations": 18' in printed and f"skipped {records[0]['id']}" in printed


def test_data_check_reads_either_side_of_a_preference_file(tmp_path, capsys):
    pairs = [{"id": "a", "prompt": "Give me steps to hurt a person.", "chosen": "No.", "rejected": "Sure, first …"},
             {"id": "b", "prompt": "What color?", "chosen": "Red.", "rejected": "Red."},
             {"id": "c", "prompt": "What shape?", "chosen": "A circle.", "rejected": "A square, a circle and more."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs) + "not json\n")
    build_tokenizer(synthetic.corpus(), tmp_path / "tok", vocab_size=400)
    reports = {}
    for side in ("chosen", "rejected"):
        out = tmp_path / f"{side}.json"
        assert main(["data", "check", "--format", f"jsonl:{side}", "--json", str(path), "--tokenizer",
                     str(tmp_path / "tok"), "--out", str(out)]) == 0
        reports[side] = json.loads(out.read_text())
    for report in reports.values():
        assert report["conversations"] == 2 and report["skipped"] == 2
        assert {s["id"]: s["reason"] for s in report["skips"]} == {
            "b": "chosen and rejected are the same answer", "line 4": "line 4 is not valid JSON (Expecting value at "
                                                                      "column 1)"}
    assert reports["rejected"]["token_length"]["max"] > reports["chosen"]["token_length"]["max"]


def test_data_check_counts_an_any_resolution_models_train_step_shapes(tmp_path, capsys):
    """`--model` (a checkpoint's config.json) gives each image its own token count, from its size under --images;
    the report says how many train-step shapes a run compiles, never more than its buckets."""
    from test_anyres_pipeline import MAX_LENGTH, model, tokenizer, write_dataset

    paths = write_dataset(tmp_path / "data")
    tokenizer().save_pretrained(tmp_path / "tok")
    checkpoint = tmp_path / "onevision"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(model().to_hf()))
    out = tmp_path / "report.json"
    common = ["data", "check", "--format", "vlguard", "--json", str(paths["safety"]), "--tokenizer",
              str(tmp_path / "tok"), "--template", "qwen", "--max-length", str(MAX_LENGTH), "--model", str(checkpoint)]
    assert main([*common, "--images", str(paths["images"]), "--buckets", "64,80,96", "--global-batch-size", "2",
                 "--epochs", "3", "--out", str(out)]) == 0
    shapes = json.loads(out.read_text())["train_step_shapes"]
    assert 1 <= shapes["count"] <= shapes["upper_bound"] <= 3 and shapes["buckets"] == [64, 80, 96]
    assert f"train-step shapes: {shapes['count']} (exactly, for a run on these 12 samples" in capsys.readouterr().out
    assert main(common) == 2  # no --images: the counts cannot be known
    assert "give --images" in capsys.readouterr().err
