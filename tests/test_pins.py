"""Resume pins what changes the math or the data, and only that: every config field has one role; a pinned change is
refused by name; a run resumed after changing performance and location knobs (and moving a data file) continues."""

import copy
import dataclasses
import shutil

import pytest

from train_fixtures import TINY
from vlguard_jax.config import Config, ConfigError, config_from_dict, dump_config
from vlguard_jax.data.recipes import synthetic_dataset
from vlguard_jax.train import pins
from vlguard_jax.train.metrics_log import read_metrics

ROLES = {"pinned": pins.PINNED, "content": pins.CONTENT, "extent": pins.EXTENT, "free": pins.FREE}


def test_every_config_field_has_exactly_one_role():
    fields = pins.flat(Config())
    tables = list(ROLES.values())
    for i, table in enumerate(tables):
        for other in tables[i + 1:]:
            assert not table & other, table & other
    assert [key for key in fields if pins.role(key) is None] == []
    stale = [entry for table in tables for entry in table
             if not any(key == entry or key.startswith(entry + ".") for key in fields)]
    assert stale == [], "table entries that name no config field"
    assert pins.role("model.architecture.text_config.hidden_size") == "pinned"  # a dict field counts as one


def _saved(tmp_path, raw: dict) -> Config:
    config = config_from_dict(raw, "tiny")
    dump_config(config, tmp_path / "config.yaml")
    return config


@pytest.mark.parametrize("key,value,message", [
    ("train.optimizer.learning_rate", 2.0e-3, "train.optimizer.learning_rate: 0.001 → 0.002"),
    ("train.lora.rank", 8, "train.lora.rank: 4 → 8"),
    ("data.seed", 3, "data.seed: 0 → 3"),
    ("train.accum_steps", 2, "train.accum_steps: 1 → 2"),
])
def test_a_pinned_change_is_refused_naming_the_field(tmp_path, key, value, message):
    _saved(tmp_path, TINY)
    changed = copy.deepcopy(TINY)
    *sections, leaf = key.split(".")
    node = changed
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    with pytest.raises(ConfigError) as refused:
        pins.check_workdir(config_from_dict(changed, "tiny"), tmp_path)
    assert f"holds a run of a different configuration ({message}); these fields change the math or the data" \
        in str(refused.value)


def test_free_extent_and_content_changes_resume_silently(tmp_path, capsys):
    config = _saved(tmp_path, {**TINY, "data": {**TINY["data"], "synthetic": False, "safety": "a/train.json"}})
    changed = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, remat="full", attention_chunk=16, attention="xla", tokenizer="tok"),
        data=dataclasses.replace(config.data, workers=4, cache_dir="/tmp/cache", safety="b/train.json",
                                 safety_images="b/images", max_image_failures=0.5),
        train=dataclasses.replace(config.train, epochs=20, max_steps=None, log_every=7, keep_checkpoints=9,
                                  loss_chunk=32),
        mesh=dataclasses.replace(config.mesh, data=2, fsdp=4),
        hft=dataclasses.replace(config.hft, judge="llama_guard"))
    pins.check_workdir(changed, tmp_path)
    assert capsys.readouterr() == ("", "")


def test_result_settings_hold_pinned_extent_and_content_digests(tmp_path):
    data = tmp_path / "safety.json"
    data.write_text("[]")
    config = config_from_dict({**TINY, "data": {**TINY["data"], "synthetic": False, "safety": str(data)}}, "tiny")
    settings = pins.result_settings(config, pins.content_digest)
    assert settings["data.safety"] == "sha256 4f53cda18c2baa0c"  # sha256 of "[]"
    assert settings["train.max_steps"] == 20 and settings["train.optimizer.learning_rate"] == 1e-3
    assert "data.workers" not in settings and "model.remat" not in settings and "data.helpful" not in settings


def test_a_resume_with_other_knobs_and_a_moved_data_file_continues_the_run(tmp_path):
    """4 steps, then 4 more with remat, attention blocks, chunked loss, a data worker process, another cache and the
    safety data moved: the run continues from its checkpoint as the same run resumed unchanged does (the same
    losses)."""
    from vlguard_jax.train.loop import train

    paths = synthetic_dataset(config_from_dict(TINY, "tiny").data, tmp_path)
    raw = copy.deepcopy(TINY)
    raw["model"]["tokenizer"] = str(paths["tokenizer"])
    raw["data"].update(synthetic=False, safety=str(paths["train"]), safety_images=str(paths["images"]),
                       helpful=str(paths["instruct"]), helpful_images=str(paths["images"]))
    raw["train"].update(max_steps=4, checkpoint_every=4)
    assert train(config_from_dict(raw, "tiny"), tmp_path / "run", progress=False).steps == 4
    shutil.copytree(tmp_path / "run", tmp_path / "unchanged")
    raw["train"]["max_steps"] = 8  # an extended run
    assert train(config_from_dict(raw, "tiny"), tmp_path / "unchanged", progress=False).steps == 8

    moved = tmp_path / "moved" / "train.json"
    moved.parent.mkdir()
    shutil.move(paths["train"], moved)
    raw["model"].update(remat="full", attention_chunk=64)
    raw["train"]["loss_chunk"] = 32
    raw["data"].update(cache_dir=str(tmp_path / "other_cache"), safety=str(moved), workers=1)
    resumed = train(config_from_dict(raw, "tiny"), tmp_path / "run", progress=False)
    assert resumed.steps == 8 and resumed.status == "finished"
    ours = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "run")]
    theirs = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "unchanged")]
    assert [step for step, _ in ours] == list(range(1, 9))
    for (step, loss), (_, expected) in zip(ours, theirs, strict=True):
        assert loss == pytest.approx(expected, abs=1e-5), step
