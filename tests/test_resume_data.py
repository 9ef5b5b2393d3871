"""A resumed run replays the mixture recorded in WORKDIR/mixture.json and refuses sources that changed since."""

import copy
import dataclasses
import hashlib
import json
import os

import pytest

from data_fixtures import tokenizer
from train_fixtures import TINY
from vlguard_jax.config import DataConfig, config_from_dict
from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.recipes import training_data
from vlguard_jax.data.sources import DataError

FIX = "restore the file or start a new --workdir"


@pytest.fixture()
def data(tmp_path):
    paths = synthetic.generate(tmp_path / "data", synthetic.SyntheticConfig(
        image_size=16, num_train_images=6, num_test_images=1, num_instruct=30))
    config = DataConfig(safety=str(paths["train"]), safety_images=str(paths["images"]),
                        helpful=str(paths["instruct"]), helpful_images=str(paths["images"]), num_helpful=10)
    return config, tmp_path / "run"


def chat():
    return ChatTokenizer(tokenizer(), "vicuna_v1", num_image_tokens=4, max_length=256)


def test_first_start_records_ids_and_sources_and_a_restart_replays_them(data):
    config, workdir = data
    workdir.mkdir()
    first = training_data(config, workdir, chat())
    manifest = json.loads((workdir / "mixture.json").read_text())
    assert manifest["parts"] == first.mix.manifest["parts"] and len(manifest["parts"]["helpful"]) == 10
    for name, path in (("safety", config.safety), ("helpful", config.helpful)):
        raw = open(path, "rb").read()
        assert manifest["sources"][name] == {"path": path, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    # unchanged sources: the same conversations, and the record is left as it was
    before = (workdir / "mixture.json").stat().st_mtime_ns
    again = training_data(config, workdir, chat())
    assert again.mix.ids == first.mix.ids and again.mix.manifest == manifest
    assert (workdir / "mixture.json").stat().st_mtime_ns == before
    # replayed from the recorded ids, not drawn again: another num_helpful or seed does not change them
    kept = manifest["parts"]["helpful"][:4]
    (workdir / "mixture.json").write_text(json.dumps({**manifest, "parts": {**manifest["parts"], "helpful": kept}}))
    replayed = training_data(dataclasses.replace(config, num_helpful=20, seed=5), workdir, chat())
    assert replayed.mix.ids == manifest["parts"]["safety"] + kept


def test_a_changed_or_missing_source_is_refused_by_name(data):
    config, workdir = data
    workdir.mkdir()
    training_data(config, workdir, chat())
    old = json.loads((workdir / "mixture.json").read_text())["sources"]["helpful"]
    records = json.loads(open(config.helpful).read())
    records[0]["conversations"][1]["value"] += " (edited)"
    with open(config.helpful, "w") as f:
        json.dump(records, f)
    new = open(config.helpful, "rb").read()
    with pytest.raises(DataError) as refused:
        training_data(config, workdir, chat())
    assert str(refused.value) == (
        f"{config.helpful}: changed since this run started (sha256 {old['sha256'][:12]}… → "
        f"{hashlib.sha256(new).hexdigest()[:12]}…, {old['size']} → {len(new)} bytes); {FIX}")
    safety = json.loads((workdir / "mixture.json").read_text())["sources"]["safety"]
    os.rename(config.safety, workdir.parent / "moved.json")
    with pytest.raises(DataError) as refused:
        training_data(config, workdir, chat())
    assert str(refused.value) == (f"{config.safety}: missing, but this run's mixture was drawn from it "
                                  f"(sha256 {safety['sha256'][:12]}…, {safety['size']} bytes); {FIX}")


def test_train_refuses_to_resume_on_changed_synthetic_data(tmp_path):
    from vlguard_jax.train.loop import train

    config = config_from_dict(TINY, "tiny")
    training_data(config.data, tmp_path, chat())  # what a first start records, without its training
    instruct = tmp_path / "data" / "instruct.json"
    instruct.write_text(instruct.read_text().replace("circle", "oval", 1))
    with pytest.raises(DataError, match=r"instruct\.json: changed since this run started \(sha256 "):
        train(config, tmp_path, progress=False)


def test_a_restart_that_would_tokenize_otherwise_is_refused(tmp_path):
    from transformers import AddedToken

    from vlguard_jax.config import ConfigError
    from vlguard_jax.train.loop import record_tokenization

    record_tokenization(chat(), tmp_path, primary=True)
    assert json.loads((tmp_path / "tokenization.json").read_text()) == chat().fingerprint()
    record_tokenization(chat(), tmp_path, primary=True)  # the same tokenizer resumes
    other = copy.deepcopy(tokenizer())
    other.add_tokens([AddedToken("<extra>", special=True)], special_tokens=True)
    changed = ChatTokenizer(other, "vicuna_v1", num_image_tokens=4, max_length=256)
    with pytest.raises(ConfigError, match=r"tokenization.json: this run was tokenized otherwise \(tokenizer: '[0-9a-f]{64}'"
                                          r" → '[0-9a-f]{64}'\); use the tokenizer it started with or a new --workdir"):
        record_tokenization(changed, tmp_path, primary=True)
    (tmp_path / "tokenization.json").unlink()
    (tmp_path / "checkpoints" / "40").mkdir(parents=True)  # a run saved before tokenizations were recorded
    with pytest.raises(ConfigError, match=r"holds a run saved before its tokenization was recorded \(no "
                                          r"tokenization.json\); its samples may have been tokenized otherwise"):
        record_tokenization(chat(), tmp_path, primary=True)
