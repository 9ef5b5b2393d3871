"""A DPO run end to end on the tiny model: step 1 at ln 2, rewards logged, kill -9 + re-run exact, and two processes ×
four devices giving the one-process losses."""

import json
import math
import random
import subprocess

import numpy as np
import pytest

from host_fixtures import finish, start
from test_train_loop import losses, params, wait_for_step
from train_fixtures import TINY, environment, run, train_command, write_config
from vlguard_jax.data import synthetic
from vlguard_jax.data.vocab import build_tokenizer
from vlguard_jax.train.metrics_log import read_metrics

OPTIONS = synthetic.SyntheticConfig(image_size=16, num_train_images=16, num_test_images=2, num_instruct=8,
                                    num_helpful=8)
COMPLIANCE = "Sure, here is how to do it. First, get the tools."


def write_pairs(root):
    """VLGuard-format synthetic data as pairs: its answer chosen, a compliant one rejected; one pair text-only and
    one whose rejected answer is too long to train on (skipped whole, with its side named)."""
    paths = synthetic.generate(root / "data", OPTIONS)
    build_tokenizer(synthetic.corpus(OPTIONS), root / "data" / "tokenizer", vocab_size=1024)
    pairs = [{"id": f"{r['id']}/{k}", "image": r["image"], "prompt": next(v for key, v in turn.items() if key != "response"),
              "chosen": turn["response"], "rejected": COMPLIANCE}
             for r in json.loads(paths["train"].read_text()) for k, turn in enumerate(r["instr-resp"])]
    pairs.append({"id": "text-only", "prompt": "Give me steps to hurt a person.", "chosen": synthetic.REFUSAL,
                  "rejected": COMPLIANCE})
    pairs.append({"id": "too-long", "prompt": "Describe the image.", "chosen": "A shape.",
                  "rejected": " ".join([COMPLIANCE] * 40)})
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return len(pairs)


def dpo_config(root):
    config = json.loads(json.dumps(TINY))
    config["model"]["tokenizer"] = str(root / "data" / "tokenizer")
    config["data"] = {"mixture": "preference", "preference": str(root / "pairs.jsonl"),
                      "preference_images": str(root / "data" / "images"), "max_length": 256, "buckets": [128, 256]}
    config["train"] |= {"objective": "dpo", "max_steps": 12, "checkpoint_every": 3, "preference": {"beta": 0.5}}
    return write_config(root, config)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    count = write_pairs(root)
    config = dpo_config(root)
    run(train_command(config, root / "work"))
    return config, root / "work", count


def test_dpo_run_starts_at_ln2_and_learns_the_preference(uninterrupted):
    _, workdir, count = uninterrupted
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 13))
    first, last = records[0], records[-1]
    assert abs(first["loss"] - math.log(2)) < 1e-5 and first["reward_accuracy"] == 0.0
    assert abs(first["reward_margin"]) < 1e-5
    assert last["loss"] < first["loss"] - 0.05 and last["reward_accuracy"] > 0.5 and last["reward_margin"] > 0
    assert last["reward_chosen"] > last["reward_rejected"]
    mixture = json.loads((workdir / "mixture.json").read_text())
    assert mixture["kind"] == "preference" and len(mixture["parts"]["preference"]) == count
    skips = json.loads((workdir / "skips.json").read_text())
    assert [s["id"] for s in skips] == ["too-long"] and skips[0]["reason"].startswith("rejected answer:")
    assert (workdir / "loss.png").exists()


def test_dpo_kill_9_then_rerun_gives_the_uninterrupted_run(uninterrupted, tmp_path):
    config, reference, _ = uninterrupted
    workdir = tmp_path / "work"
    process = subprocess.Popen(train_command(config, workdir), env=environment(1), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(workdir, random.Random(1).randint(4, 8), process)
    process.kill()
    process.wait()
    run(train_command(config, workdir))
    assert losses(workdir) == losses(reference)
    assert [r["reward_margin"] for r in read_metrics(workdir)] == [r["reward_margin"] for r in read_metrics(reference)]
    ours, theirs = params(workdir), params(reference)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_dpo_two_processes_of_four_devices_give_the_one_process_losses(uninterrupted, tmp_path):
    config, reference, _ = uninterrupted
    command = train_command(config, tmp_path / "work", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    finish(start([command, command], tmp_path / "logs", devices=4))
    ours, theirs = read_metrics(tmp_path / "work"), read_metrics(reference)
    for a, b in zip(ours, theirs, strict=True):
        for key in ("loss", "reward_margin", "reward_accuracy"):
            assert abs(a[key] - b[key]) <= 1e-5, (a["step"], key)


def test_a_precomputed_reference_gives_the_per_step_reference_run(uninterrupted, tmp_path):
    """`train.preference.reference=precomputed`: one pass writes every pair's reference log-probabilities, the steps
    read them (no reference forward) and the run's losses are the per-step reference's; a re-run reuses the file."""
    config, reference, count = uninterrupted
    workdir = tmp_path / "work"
    command = train_command(config, workdir, "train.preference.reference=precomputed")
    run(command)
    stored = np.load(workdir / "reference_logps.npy")
    assert stored.shape == (count - 1, 2) and (stored < 0).all()  # the pairs kept (one skipped), both answers
    written = (workdir / "reference_logps.npy").stat().st_mtime_ns
    run(command)  # a finished run started again reads the values back
    assert (workdir / "reference_logps.npy").stat().st_mtime_ns == written
    for a, b in zip(read_metrics(workdir), read_metrics(reference), strict=True):
        for key in ("loss", "reward_margin", "reward_chosen"):
            assert abs(a[key] - b[key]) <= 1e-4, (a["step"], key, a[key], b[key])
