"""An `hft` grid's cells know their settings: a cell computed with another judge, limit, optimizer or data file is
refused before anything runs, naming the field (old → new) and the fix; `overwrite` clears exactly the parts that
differ and what depends on them; changes that alter no result reuse the cells."""

import dataclasses
import json
import re

import pytest

from vlguard_jax import cells
from vlguard_jax.config import ConfigError, config_from_dict
from vlguard_jax.hft import grid
from vlguard_jax.hft.grid import cell_name


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("t.tsv", "p.jsonl", "s.json", "v.tsv", "q.json"):
        (tmp_path / name).write_text(name)
    (tmp_path / "guard").mkdir()  # a judge model's checkpoint directory
    config = config_from_dict({"data": {"task": "t.tsv", "poison": "p.jsonl", "safety": "s.json"},
                               "hft": {"test": "v.tsv", "harmful": "q.json", "poison_ratios": [0.0, 0.1],
                                       "defences": ["none", "vlguard"]}}, "test")
    return config, tmp_path / "grid"


def finish(config, out):
    """A grid as a finished run leaves it (recorded settings, trained workdirs, evaluations, results)."""
    cells.prepare(grid.grid_cells(config, out), False, "test grid")
    rows = []
    for defence in config.hft.defences:
        for p in config.hft.poison_ratios:
            cell = out / cell_name(p, defence)
            for folder in ("train", "eval"):
                (cell / folder).mkdir()
                (cell / folder / "file").write_text("x")
            rows.append({"poison_ratio": p, "defence": defence, "harmful_score": 1.0, "finetune_accuracy": 2.0,
                         "judge": config.hft.judge})
            (cell / "result.json").write_text(json.dumps(rows[-1]))
    return rows


def hft(config, **changes):
    return dataclasses.replace(config, hft=dataclasses.replace(config.hft, **changes))


def test_a_changed_judge_is_refused_naming_the_field_and_the_fix(setup):
    config, out = setup
    rows = finish(config, out)
    assert grid.run_grid(config, out, progress=False) == rows  # the same settings: every result reused
    with pytest.raises(ConfigError) as refused:
        grid.run_grid(hft(config, judge="llama_guard", judge_model="guard"), out, progress=False)
    message = str(refused.value)
    assert f"the hft grid in {out} holds results computed with other settings:" in message
    assert ("eval of p0_none, p0.1_none, p0_vlguard, p0.1_vlguard: hft.judge: 'keywords' → 'llama_guard'; "
            "hft.judge_model: None → 'guard'") in message
    assert "rerun with --overwrite to recompute them" in message and "or use a new --out" in message
    with pytest.raises(ConfigError, match=r"eval of p0_none, p0.1_none, p0_vlguard, p0.1_vlguard: "
                                          r"hft.harmful_limit: None → 50"):
        grid.run_grid(hft(config, harmful_limit=50), out, progress=False)


def test_a_changed_training_or_data_file_refuses_the_cells_it_trained(setup, tmp_path):
    config, out = setup
    finish(config, out)
    faster = dataclasses.replace(config, train=dataclasses.replace(
        config.train, optimizer=dataclasses.replace(config.train.optimizer, learning_rate=1e-3)))
    with pytest.raises(ConfigError, match=r"train of p0_none, p0.1_none, p0_vlguard, p0.1_vlguard: "
                                          r"train.optimizer.learning_rate: 0.0002 → 0.001\n"):
        grid.run_grid(faster, out, progress=False)
    (tmp_path / "s.json").write_text("other refusals")  # only the vlguard cells train on the safety data
    with pytest.raises(ConfigError) as refused:
        grid.run_grid(config, out, progress=False)
    assert re.search(r"\n  train of p0_vlguard, p0.1_vlguard: data.safety: 'sha256 [0-9a-f]{16}' → "
                     r"'sha256 [0-9a-f]{16}'\n", str(refused.value))
    assert "none" not in str(refused.value)


def test_overwrite_clears_the_parts_that_differ_and_what_depends_on_them(setup):
    config, out = setup
    finish(config, out)
    judged = hft(config, judge="llama_guard", judge_model="guard")
    cells.prepare(grid.grid_cells(judged, out), True, "test grid")
    cell = out / cell_name(0.1, "none")
    assert (cell / "train" / "file").exists()  # a new judge: the training is kept
    assert not (cell / "eval").exists() and not (cell / "result.json").exists()
    recorded = json.loads((cell / "settings.json").read_text())
    assert recorded["eval"]["hft.judge"] == "llama_guard" and recorded["train"]["data.poison_ratio"] == 0.1
    cells.prepare(grid.grid_cells(judged, out), False, "test grid")  # recorded now: accepted
    longer = dataclasses.replace(judged, train=dataclasses.replace(judged.train, epochs=5))
    cells.prepare(grid.grid_cells(longer, out), True, "test grid")
    assert not (cell / "train").exists()  # its training differs, and its evaluation would depend on it


def test_changes_that_alter_no_result_reuse_the_cells(setup):
    config, out = setup
    rows = finish(config, out)
    quiet = dataclasses.replace(hft(config, batch_size=32, judge_url="http://elsewhere"),
                                data=dataclasses.replace(config.data, workers=4, cache_dir="/tmp/c"),
                                model=dataclasses.replace(config.model, remat="full"))
    assert grid.run_grid(quiet, out, progress=False) == rows


def test_unrecorded_results_are_refused_and_an_empty_cell_is_recorded_anew(setup):
    config, out = setup
    (out / "p0_none" / "eval").mkdir(parents=True)
    (out / "p0_none" / "result.json").write_text("{}")  # a grid from before settings were recorded
    with pytest.raises(ConfigError, match=r"eval of p0_none: no settings recorded"):
        cells.prepare(grid.grid_cells(config, out), False, "test grid")
    (out / "p0_none" / "result.json").unlink()
    cells.prepare(grid.grid_cells(config, out), False, "test grid")  # holds nothing: recorded, not refused
    cells.prepare(grid.grid_cells(hft(config, judge="llama_guard"), out), False, "test grid")  # still nothing there
    assert json.loads((out / "p0_none" / "settings.json").read_text())["eval"]["hft.judge"] == "llama_guard"


def test_posthoc_claims_the_training_of_its_attack(setup):
    config, out = setup
    posthoc = hft(config, defences=["posthoc"])
    found = {cell.name: cell for cell in grid.grid_cells(posthoc, out)}
    assert set(found) == {"p0_posthoc", "p0.1_posthoc", "p0_none", "p0.1_none"}
    attack = found["p0.1_none"]
    assert [part.name for part in attack.parts] == ["train", "eval"] and attack.parts[1].settings is None
    training = found["p0.1_posthoc"].parts[0].settings
    assert {k.removeprefix("attack."): v for k, v in training.items() if k.startswith("attack.")} \
        == attack.parts[0].settings
    assert training["model.path"] == "attacked_merged" and training["data.mixture"] == "posthoc"
    assert "data.safety" not in attack.parts[0].settings  # the attack without defence uses no safety data


def test_a_field_added_since_a_cell_was_recorded_counts_as_its_default(setup):
    """Cells recorded before a config field existed are reused while the field keeps its default, and refused,
    naming it, once it is set."""
    config, out = setup
    rows = finish(config, out)
    records = list(out.glob("*/settings.json"))
    assert len(records) == 4
    for record in records:
        settings = json.loads(record.read_text())
        settings["train"].pop("data.safety_exclude_categories")
        record.write_text(json.dumps(settings))
    assert grid.run_grid(config, out, progress=False) == rows
    changed = dataclasses.replace(config, data=dataclasses.replace(config.data, safety_exclude_categories=("privacy",)))
    with pytest.raises(ConfigError, match=r"data.safety_exclude_categories: \[\] → \['privacy'\]"):
        grid.run_grid(changed, out, progress=False)
