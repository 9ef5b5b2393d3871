"""`data audit`: every exchange of an instruction file judged, the flagged ones listed, a clean copy written; through
a network judge that is asked once per exchange, through a local Llama Guard that judges as `judge` does (on one
process or two), resumed after kill -9, into a bucket."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from audit_fixtures import MARKER, marker_server, planted_mix, verdict_guard, write_mix
from host_fixtures import finish, start
from tests.gcs_fixtures import gcs_bucket, local_gs_folders  # noqa: F401
from train_fixtures import environment
from vlguard_jax import storage
from vlguard_jax.audit import flagged_ids
from vlguard_jax.cli import main
from vlguard_jax.evaluate.judges import Item, make_judge

STABLE = ("flagged.jsonl", "unparseable.jsonl", "clean.json", "report.md", "report.png", "skips.jsonl")


def audit_args(mix, out, *extra) -> list[str]:
    return ["data", "audit", "--format", "llava", "--json", str(mix), "--out", str(out), *extra]


def http_args(mix, out, server, *extra) -> list[str]:
    return audit_args(mix, out, "--judge", "openai", "--judge-url", server.url, "--judge-model", "guard",
                      "--chunk", "3", *extra)


def outputs(out) -> dict:
    files = {name: (out / name).read_bytes() for name in STABLE}
    audit = json.loads((out / "audit.json").read_text())
    audit.pop("throughput")
    audit["settings"].pop("input")  # its path differs between two mixes of the same bytes
    return {**files, "audit.json": audit}


@pytest.fixture
def mix(tmp_path):
    path = tmp_path / "mix.json"
    records, planted = write_mix(path)
    return path, records, planted


def test_flags_exactly_the_planted_conversations_and_keeps_every_other_record(mix, tmp_path):
    path, records, planted = mix
    out = tmp_path / "out"
    distinct = {(r["conversations"][k]["value"], r["conversations"][k + 1]["value"])
                for i, r in enumerate(records) if i != 4 for k in range(0, len(r["conversations"]), 2)}
    with marker_server() as server:
        assert main(http_args(path, out, server)) == 0
        assert server.attempts["requests"] == len(distinct)  # one request per distinct exchange
        first = outputs(out)
        assert main(http_args(path, out, server)) == 0  # done: nothing judged again
        assert main(http_args(path, out, server, "--overwrite")) == 0  # from scratch: every reply from the cache
        assert server.attempts["requests"] == len(distinct) and outputs(out) == first
    exchanges = sum(len(r["conversations"]) // 2 for i, r in enumerate(records) if i != 4)
    lines = [json.loads(line) for line in (out / "flagged.jsonl").read_text().splitlines()]
    assert [(line["index"], line["exchange"]) for line in lines] == [
        (index, k) for index, ks in sorted(planted.items()) for k in ks]
    assert flagged_ids(out) == [records[i]["id"] for i in sorted(planted)]
    assert all(line["categories"] == ["S2"] and line["raw"] == "unsafe\nS2" for line in lines)
    clean = json.loads((out / "clean.json").read_text())
    assert clean == [r for i, r in enumerate(records) if i not in planted]  # the malformed record kept, as it was
    audit = json.loads((out / "audit.json").read_text())
    assert (audit["records"], audit["skipped_records"], audit["conversations"], audit["exchanges"]) == (
        12, 1, 11, exchanges)
    assert (audit["flagged_conversations"], audit["flagged_exchanges"], audit["unparseable"]) == (3, 4, 0)
    assert audit["per_category"] == {"S2": 3}
    assert audit["per_source"] == {"coco": {"conversations": 4, "flagged": 1}, "gqa": {"conversations": 3, "flagged": 1},
                                   "no image": {"conversations": 4, "flagged": 1}}
    assert audit["tokens"]["prompt"] == 100 * exchanges and audit["settings"]["images_shown"] is False
    report = (out / "report.md").read_text()
    assert "3 of 11 conversations flagged" in report and "Images were not shown" in report and MARKER in report
    assert json.loads((out / "skips.jsonl").read_text())["id"] == "bad"


def test_killed_mid_audit_and_rerun_writes_what_one_run_writes(mix, tmp_path):
    path, records, _ = mix
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    with marker_server(delay=0.3) as server:
        assert main(http_args(path, whole, server, "--judge-cache", str(tmp_path / "cache_whole"))) == 0
        command = [sys.executable, "-m", "vlguard_jax.cli", *http_args(path, resumed, server, "--chunk", "2",
                                                                         "--judge-concurrency", "1")]
        process = subprocess.Popen(command, env=environment(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        progress = resumed / "progress.json"
        deadline = time.time() + 120
        while not (progress.exists() and json.loads(progress.read_text())["conversations"] >= 4):
            assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.5)  # a request in flight at the kill is counted once its reply is (uselessly) sent
        before = server.attempts["requests"]
        done = json.loads(progress.read_text())["conversations"]
        assert not (resumed / "clean.json").exists()
        assert main(http_args(path, resumed, server, "--chunk", "2")) == 0
        resent = server.attempts["requests"] - before
    assert outputs(resumed) == outputs(whole)
    parsed = [r for i, r in enumerate(records) if i != 4]
    assert 0 < resent <= sum(len(r["conversations"]) // 2 for r in parsed[done:])  # what was judged is not asked again


def test_refuses_other_settings_and_judges_that_do_not_decide_harm(mix, tmp_path, capsys):
    path, _, _ = mix
    out = tmp_path / "out"
    with marker_server() as server:
        assert main(http_args(path, out, server)) == 0
        capsys.readouterr()
        assert main(audit_args(path, out, "--judge", "openai", "--judge-url", server.url, "--judge-model", "x")) == 2
        assert "other settings (judge_model: 'guard' → 'x')" in capsys.readouterr().err
        moved = tmp_path / "moved.json"
        moved.write_bytes(path.read_bytes())
        assert main(http_args(moved, out, server)) == 0  # the same content elsewhere: the same audit
        moved.write_text(path.read_text().replace("A cat", "A dog"))
        assert main(http_args(moved, out, server)) == 2
        assert "other settings (input: " in capsys.readouterr().err
    assert main(audit_args(path, tmp_path / "k", "--judge", "keywords")) == 2
    assert "--judge keywords does not decide harm" in capsys.readouterr().err


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guard")
    records, _ = planted_mix()
    verdict_guard(directory, [m["value"] for r in records for m in r.get("conversations", [])],
                  [(line["prompt"], line["response"]) for line in exchanges_of(records)], seed=5)
    return directory


def exchanges_of(records) -> list[dict]:
    return [{"id": f"{i}:{k // 2}", "prompt": r["conversations"][k]["value"].removeprefix("<image>\n"),
             "response": r["conversations"][k + 1]["value"]}
            for i, r in enumerate(records) if i != 4 for k in range(0, len(r["conversations"]), 2)]


def verdicts(out) -> dict:
    """(record index, exchange) → (label, raw) of every exchange the audit wrote (flagged or unreadable)."""
    lines = [json.loads(line) for name in ("flagged.jsonl", "unparseable.jsonl")
             for line in (out / name).read_text().splitlines()]
    return {f"{line['index']}:{line['exchange']}": (line["label"], line["raw"]) for line in lines}


def test_llama_guard_audit_judges_as_the_judge_command(mix, guard, tmp_path, capsys):
    path, records, _ = mix
    lines = exchanges_of(records)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["judge", "--judge", "llama_guard", "--judge-model", str(guard), "--dtype", "float32",
                 "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "judged.jsonl")]) == 0
    judged = [json.loads(line) for line in (tmp_path / "judged.jsonl").read_text().splitlines()]
    expected = {j["id"]: (j["judge_label"], j["judge_raw"]) for j in judged if j["judge_label"] != "safe"}
    assert {label for label, _ in expected.values()} >= {"unsafe", "unparseable"}, "the guard must say both"
    out = tmp_path / "audit"
    assert main(audit_args(path, out, "--judge", "llama_guard", "--judge-model", str(guard), "--dtype", "float32",
                           "--batch-size", "4", "--chunk", "4", "--max-unparseable", "1")) == 0
    assert verdicts(out) == expected
    unsafe = {key.split(":")[0] for key, (label, _) in expected.items() if label == "unsafe"}
    clean = json.loads((out / "clean.json").read_text())
    assert clean == [r for i, r in enumerate(records) if str(i) not in unsafe]
    capsys.readouterr()
    assert main(audit_args(path, tmp_path / "strict", "--judge", "llama_guard", "--judge-model", str(guard),
                           "--dtype", "float32")) == 2
    assert "unparseable.jsonl: " in capsys.readouterr().err


def test_threshold_scores_the_verdict_token_as_transformers_does(mix, guard, tmp_path):
    """P(unsafe) from one prefill equals transformers' next-token probabilities; rows whose first token is neither
    word are generated and read."""
    path, records, _ = mix
    out = tmp_path / "scored"
    assert main(audit_args(path, out, "--judge", "llama_guard", "--judge-model", str(guard), "--dtype", "float32",
                           "--batch-size", "4", "--threshold", "0.3", "--max-unparseable", "1")) == 0
    tokenizer = AutoTokenizer.from_pretrained(guard)
    model = LlamaForCausalLM.from_pretrained(guard, torch_dtype=torch.float32).eval()
    safe, unsafe = ([i for i in tokenizer(word, add_special_tokens=False)["input_ids"] if tokenizer.decode([i]).strip()][0]
                    for word in ("safe", "unsafe"))  # each word's first token past the word-start marker
    written = {f"{line['index']}:{line['exchange']}": line
               for line in map(json.loads, (out / "flagged.jsonl").read_text().splitlines())}
    unreadable = {f"{line['index']}:{line['exchange']}"
                  for line in map(json.loads, (out / "unparseable.jsonl").read_text().splitlines())}
    generating = make_judge("llama_guard", path=str(guard), dtype="float32")
    decided = undecided = 0
    for line in exchanges_of(records):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": line["prompt"]},
                                             {"role": "assistant", "content": line["response"]}], tokenize=True,
                                            return_dict=False)
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1).numpy().astype(np.float64)
        mass, p = probs[safe] + probs[unsafe], probs[unsafe] / (probs[safe] + probs[unsafe])
        key = line["id"]
        if mass >= 0.5:
            decided += 1
            assert (key in written) == (p >= 0.3), (key, p)
            if key in written:
                np.testing.assert_allclose(written[key]["probability"], p, atol=1e-5)
        else:  # neither word first: the reply is generated and read
            undecided += 1
            label = generating.judge([Item(line["prompt"], line["response"])])[0].label
            assert (key in written, key in unreadable) == (label == "unsafe", label == "unparseable"), key
    assert decided >= 3 and undecided >= 3, "too few rows of each kind to test them"


@pytest.mark.slow
def test_two_processes_audit_as_one(mix, guard, tmp_path):
    """2 processes × 4 devices (gloo): the guard on the 8-device mesh, process 0 writing; the files equal one
    process's on one device."""
    path, _, _ = mix
    args = lambda out: [sys.executable, "-m", "vlguard_jax.cli", *audit_args(
        path, out, "--judge", "llama_guard", "--judge-model", str(guard), "--dtype", "float32", "--batch-size", "8",
        "--chunk", "4", "--max-unparseable", "1")]
    subprocess.run(args(tmp_path / "one"), env=environment(1), check=True, capture_output=True, timeout=600)
    finish(start([args(tmp_path / "two"), args(tmp_path / "two_process1")], tmp_path / "logs"))
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    assert not (tmp_path / "two_process1" / "flagged.jsonl").exists()  # process 1 writes nothing


def test_count_tokens_counts_the_judges_prompts(mix, guard, capsys):
    path, records, _ = mix
    capsys.readouterr()
    assert main(audit_args(path, "unused", "--judge-model", str(guard), "--count-tokens")) == 0
    counted = json.loads(capsys.readouterr().out)
    tokenizer = AutoTokenizer.from_pretrained(guard)
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": line["prompt"]},
                                                  {"role": "assistant", "content": line["response"]}],
                                                 tokenize=True, return_dict=False)) for line in exchanges_of(records)]
    assert counted == {"conversations": 11, "skipped_records": 1, "exchanges": len(lengths),
                       "prompt_tokens": sum(lengths), "bucketed_tokens": sum(next(b for b in (64, 128, 256, 512) if b >= n)
                                                                             for n in lengths),
                       "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1),
                       "max_prompt_tokens": max(lengths)}


def test_an_audit_into_a_bucket_writes_what_a_local_one_writes(mix, gcs_bucket, tmp_path, monkeypatch):  # noqa: F811
    path, _, _ = mix
    monkeypatch.chdir(tmp_path)
    with marker_server() as server:
        assert main(http_args(path, tmp_path / "local", server)) == 0
        assert main(http_args(path, f"{gcs_bucket}/audit", server)) == 0
    remote = storage.path(f"{gcs_bucket}/audit")
    assert {name: (remote / name).read_bytes() for name in STABLE} == {
        name: (tmp_path / "local" / name).read_bytes() for name in STABLE}
    assert (remote / "judge_cache").exists() and not local_gs_folders(tmp_path)
