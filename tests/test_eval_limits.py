"""Honest denominators: an evaluation whose skipped rows pass a benchmark's `max_skipped` stops and names its
skips.jsonl (`--max-skipped` allows more), and `compare` refuses two summaries scored over different N."""

import json

import pytest

from eval_fixtures import random_checkpoint, vlguard_eval_args
from vlguard_jax.cli import main
from vlguard_jax.evaluate.protocols import protocol


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("eval_limits"), num_test_images=12)


def test_an_unreadable_image_past_max_skipped_stops_the_evaluation(setup, tmp_path, capsys):
    root, paths = setup
    unsafe = [r for r in json.loads(paths["test"].read_text()) if not r["safe"]]
    out = tmp_path / "out"
    args = vlguard_eval_args(setup, out, 4, "--batch-size", "8")
    (paths["images"] / unsafe[0]["image"]).rename(tmp_path / "moved")
    try:
        assert main(args) == 2
        skips = out / "vlguard_unsafes" / "skips.jsonl"
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"error: {skips}: 1 of the {len(unsafe)} rows of vlguard_unsafes skipped ({1 / len(unsafe):.1%}), more "
            f"than its max_skipped 1.0%; each line there says why (an unreadable image: check --images), or allow "
            f"more with --max-skipped FRACTION")
        assert [json.loads(line)["id"] for line in skips.read_text().splitlines()] == [unsafe[0]["id"]]
        assert main(args) == 2  # resumed: still past the limit, before any generation
        assert main(args + ["--max-skipped", "0.2"]) == 0
    finally:
        (tmp_path / "moved").rename(paths["images"] / unsafe[0]["image"])
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]["vlguard_unsafes"]
    assert (summary["n"], summary["skipped"]) == (len(unsafe) - 1, 1)
    lines = (out / "vlguard_unsafes" / "responses.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["id"] for line in lines}) == len(unsafe) - 1  # none twice


def summary(directory, n: int, value: float) -> None:
    directory.mkdir()
    (directory / "summary.json").write_text(json.dumps(
        {"settings": {**protocol("vlguard").record(), "overridden": [], "dtype": "bfloat16"},
         "benchmarks": {"vlguard_unsafes": {"n": n, "metric": "asr", "value": value, "skipped": 10 - n},
                        "xstest_safe": {"n": 250, "metric": "compliance", "value": 90.0, "skipped": 0}}}))


def test_compare_refuses_different_n_unless_allowed(tmp_path, capsys):
    before, after = tmp_path / "before", tmp_path / "after"
    summary(before, 10, 80.0)
    summary(after, 8, 5.0)
    assert main(["compare", str(before), str(after)]) == 2
    assert capsys.readouterr().err == (
        f"error: scored over different N: vlguard_unsafes (n 10 in {before}, 8 in {after}); the difference would "
        f"mix the change of model with that of the rows (see each BENCHMARK/skips.jsonl); --allow-different-n to "
        f"compare anyway\n")
    assert main(["compare", str(before), str(after), "--allow-different-n"]) == 0
    printed = capsys.readouterr().out
    assert "| vlguard_unsafes | ASR % | 80.0 | 5.0 | -75.00 |" in printed
    assert printed.endswith(f"\n\nOver different N: vlguard_unsafes (n 10 in {before}, 8 in {after})\n")
