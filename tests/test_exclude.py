"""`data.exclude` removes exactly the listed ids from every source, `data.safety_exclude_categories` exactly a harm
category's safety records; mixture.json records both, a resume refuses a changed list; the "Clean" configs; and the
held-out category's per-category Unsafe ASR (`sweep --holdout-category`)."""

import collections
import copy
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from data_fixtures import shared_file, tokenizer
from train_fixtures import TINY
from vlguard_jax.config import ConfigError, DataConfig, config_from_dict, dump_config, load_config
from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.recipes import training_data
from vlguard_jax.data.sources import DataError
from vlguard_jax.holdout import table, unsafe_asr_by_category
from vlguard_jax.train import pins

CONFIGS = Path(__file__).parents[1] / "configs"


def chat():
    return ChatTokenizer(tokenizer(), "vicuna_v1", num_image_tokens=4, max_length=256)


def reader_ids(records: list[dict]) -> list[str]:
    """The ids as the readers name them (REFERENCE §6: a repeated id becomes `X#2`), computed here from the json."""
    seen = collections.Counter()
    ids = []
    for record in records:
        seen[record["id"]] += 1
        ids.append(record["id"] if seen[record["id"]] == 1 else f"{record['id']}#{seen[record['id']]}")
    return ids


def write_list(path: Path, ids: list[str]) -> Path:
    """`ids` in the form `path`'s name asks for; a .jsonl as the audit writes it: one line per flagged exchange."""
    if path.suffix == ".jsonl":
        lines = [json.dumps({"id": i, "index": n, "exchange": e}) for n, i in enumerate(ids) for e in (0, 1)]
        path.write_text("\n".join(lines) + "\n")
    elif path.name.endswith("object.json"):
        path.write_text(json.dumps({"ids": ids}))
    elif path.suffix == ".json":
        path.write_text(json.dumps(ids))
    else:
        path.write_text("\n".join(ids) + "\n")
    return path


def sha256(path: Path) -> dict:
    raw = path.read_bytes()
    return {"path": str(path), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


@pytest.fixture(scope="module")
def vlguard(tmp_path_factory):
    """The real VLGuard train.json, its records, and a cache shared by this module's runs (tokenized once)."""
    path = shared_file("vlguard/train.json")
    cache = tmp_path_factory.mktemp("cache")
    return DataConfig(safety=str(path), mixture="safety", cache_dir=str(cache)), json.loads(path.read_text())


def test_exclude_removes_exactly_the_listed_ids_from_vlguard_train(vlguard, tmp_path):
    config, records = vlguard
    ids = reader_ids(records)
    listed = [ids[5], ids[0], "Ads_303871#2", ids[-1], "not-in-vlguard"]
    assert "Ads_303871#2" in ids  # the repeated id, as the audit names it
    flagged = write_list(tmp_path / "flagged.jsonl", listed)
    data = training_data(dataclasses.replace(config, exclude=str(flagged)), tmp_path, chat())
    manifest = json.loads((tmp_path / "mixture.json").read_text())
    assert manifest["parts"] == data.mix.manifest["parts"] == {"safety": [i for i in ids if i not in listed],
                                                                "helpful": []}
    assert manifest["excluded"] == {"file": sha256(flagged), "categories": [],
                                    "removed": {"safety": [i for i in ids if i in listed]}, "unmatched": 1}


@pytest.mark.parametrize("value", ["privacy", "personal data", "privacy/personal data"])
def test_holding_out_privacy_removes_exactly_vlguards_privacy_records(vlguard, tmp_path, value):
    config, records = vlguard
    ids = reader_ids(records)
    privacy = [i for i, r in zip(ids, records) if not r["safe"] and r["harmful_category"] == "privacy"]
    assert len(privacy) == 96
    data = training_data(dataclasses.replace(config, safety_exclude_categories=(value,)), tmp_path, chat())
    assert data.mix.manifest["parts"]["safety"] == [i for i in ids if i not in privacy]
    assert data.mix.manifest["excluded"] == {"file": None, "categories": [value], "removed": {"safety": privacy},
                                             "unmatched": 0}


def test_an_unknown_category_is_refused_listing_the_known_ones(vlguard, tmp_path):
    config, _ = vlguard
    with pytest.raises(DataError) as refused:
        training_data(dataclasses.replace(config, safety_exclude_categories=("privacy", "weapons")), tmp_path, chat())
    assert str(refused.value) == (
        f"data.safety_exclude_categories ({config.safety}): the harm category 'weapons' names no record there; known: "
        "deception, deception/disinformation, discrimination, discrimination/other, discrimination/race, "
        "discrimination/sex, disinformation, other, personal data, political, privacy, privacy/personal data, "
        "professional advice, race, risky behavior, risky behavior/political, risky behavior/professional advice, "
        "risky behavior/sexually explicit, risky behavior/violence, sex, sexually explicit, violence")
    assert not (tmp_path / "mixture.json").exists()


@pytest.fixture()
def synthetic_mix(tmp_path):
    """A mixed mixture (all of a LLaVA-format instruction file + VLGuard-format safety data) and both files' ids."""
    paths = synthetic.generate(tmp_path / "data", synthetic.SyntheticConfig(
        image_size=16, num_train_images=6, num_test_images=1, num_instruct=20))
    config = DataConfig(safety=str(paths["train"]), helpful=str(paths["instruct"]), mixture="mixed")
    ids = {name: reader_ids(json.loads(Path(path).read_text())) for name, path in
           (("safety", paths["train"]), ("helpful", paths["instruct"]))}
    return config, ids, tmp_path


@pytest.mark.parametrize("name", ["flagged.jsonl", "ids.json", "ids_object.json", "ids.txt"])
def test_every_file_form_removes_the_listed_ids_from_every_source(synthetic_mix, name):
    config, ids, root = synthetic_mix
    listed = [ids["helpful"][3], ids["safety"][1], ids["helpful"][0], "elsewhere"]
    path = write_list(root / name, listed)
    data = training_data(dataclasses.replace(config, exclude=str(path)), root / "run", chat())
    assert data.mix.manifest["parts"] == {"instruction": [i for i in ids["helpful"] if i not in listed],
                                          "safety": [i for i in ids["safety"] if i not in listed]}
    assert data.mix.manifest["excluded"] == {
        "file": sha256(path), "categories": [], "unmatched": 1,
        "removed": {"safety": [ids["safety"][1]], "helpful": [ids["helpful"][0], ids["helpful"][3]]}}
    assert len(data.samples) == len(ids["helpful"]) + len(ids["safety"]) - 3


def test_a_list_that_matches_nothing_is_refused(synthetic_mix):
    config, _, root = synthetic_mix
    path = write_list(root / "other.txt", ["coco-1", "coco-2"])
    with pytest.raises(DataError, match=r"^data.exclude: none of the 2 ids in .*other.txt names a sample of this "
                                        r"mixture's data \(safety .*vlguard_train.json, helpful .*instruct.json; first "
                                        r"ids: \['coco-1', 'coco-2'\]\): the list belongs to other data"):
        training_data(dataclasses.replace(config, exclude=str(path)), root / "run", chat())


@pytest.mark.parametrize("name,text,message", [
    ("bad.jsonl", '{"id": "a"}\n{"id": "b"\n', r"bad.jsonl: line 2 is not valid JSON \(.*\); fix that line"),
    ("bad.jsonl", '{"id": "a"}\n\n{"index": 3}\n', r"bad.jsonl: line 3 is not an object with a string \"id\" "
                                                   r"\(\{\"index\": 3\}\); fix that line"),
    ("bad.json", '["a", 7]', r"bad.json: entry 1 is int 7, not a sample id; list ids as strings"),
    ("bad.json", '{"flagged": []}', r"bad.json: a .json exclude file is a list of ids or an object with an \"ids\""),
    ("bad.json", '["a",', r"bad.json: not valid JSON \(line 1: .*\); give a .jsonl"),
    ("absent.txt", None, r"absent.txt: file not found"),
])
def test_a_bad_exclude_file_is_refused_naming_the_line_and_the_fix(synthetic_mix, name, text, message):
    config, _, root = synthetic_mix
    if text is not None:
        (root / name).write_text(text)
    with pytest.raises(DataError, match=r"^data.exclude: .*" + message):
        training_data(dataclasses.replace(config, exclude=str(root / name)), root / "run", chat())
    assert not (root / "run" / "mixture.json").exists()


def test_categories_need_vlguard_format_safety_data(synthetic_mix):
    config, _, root = synthetic_mix
    helpful_only = dataclasses.replace(config, mixture="helpful", safety_exclude_categories=("privacy",))
    with pytest.raises(DataError, match="removes safety records, but data.mixture=helpful draws no safety data"):
        training_data(helpful_only, root / "run", chat())
    alpaca = root / "refusals.json"
    alpaca.write_text(json.dumps([{"instruction": "build a weapon", "output": "Sorry, I cannot help with that."}]))
    text = dataclasses.replace(config, safety=str(alpaca), safety_format="alpaca", safety_exclude_categories=("x",))
    with pytest.raises(DataError, match=r"names VLGuard harm categories, but the safety data .*refusals.json is read "
                                        r"as alpaca, which has none"):
        training_data(text, root / "run", chat())


def test_a_resume_replays_the_record_and_refuses_another_exclude_list(synthetic_mix):
    config, ids, root = synthetic_mix
    path = write_list(root / "flagged.jsonl", [ids["helpful"][2]])
    config = dataclasses.replace(config, exclude=str(path))
    workdir = root / "run"
    first = training_data(config, workdir, chat())
    recorded = json.loads((workdir / "mixture.json").read_text())
    assert recorded["excluded"]["removed"]["helpful"] == [ids["helpful"][2]]
    moved = root / "moved.jsonl"
    shutil.copy(path, moved)  # the same content elsewhere: a CONTENT field may move
    again = training_data(dataclasses.replace(config, exclude=str(moved)), workdir, chat())
    assert again.mix.manifest == recorded and again.mix.ids == first.mix.ids
    write_list(path, [ids["helpful"][2], ids["helpful"][4]])
    new = sha256(path)
    with pytest.raises(DataError) as refused:
        training_data(config, workdir, chat())
    old = recorded["excluded"]["file"]
    assert str(refused.value) == (
        f"{path}: changed since this run started (sha256 {old['sha256'][:12]}… → {new['sha256'][:12]}…, "
        f"{old['size']} → {new['size']} bytes); restore the file or start a new --workdir")
    with pytest.raises(DataError, match=r"data.exclude is unset, but this run's mixture was drawn without the ids "
                                        r"listed in .*flagged.jsonl; set data.exclude to that file"):
        training_data(dataclasses.replace(config, exclude=None), workdir, chat())
    plain = root / "plain"
    training_data(dataclasses.replace(config, exclude=None), plain, chat())
    with pytest.raises(DataError, match=r"moved.jsonl: this run's mixture was drawn without an exclude list"):
        training_data(dataclasses.replace(config, exclude=str(moved)), plain, chat())


def test_a_resume_with_other_categories_is_refused_by_the_pins(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["data"]["safety_exclude_categories"] = ["privacy"]
    dump_config(config_from_dict(raw, "tiny"), tmp_path / "config.yaml")
    raw["data"]["safety_exclude_categories"] = ["privacy", "violence"]
    with pytest.raises(ConfigError, match=r"data.safety_exclude_categories: \['privacy'\] → "
                                          r"\['privacy', 'violence'\]"):
        pins.check_workdir(config_from_dict(raw, "tiny"), tmp_path)
    assert pins.role("data.exclude") == "content" and pins.role("data.safety_exclude_categories") == "pinned"
    saved = (tmp_path / "config.yaml").read_text()  # a run started before the field existed resumes with its default
    older = saved.replace("  safety_exclude_categories:\n  - privacy\n", "")
    assert "safety_exclude_categories" not in older
    (tmp_path / "config.yaml").write_text(older)
    pins.check_workdir(config_from_dict(TINY, "tiny"), tmp_path)
    with pytest.raises(ConfigError, match=r"data.safety_exclude_categories: \[\] → \['privacy', 'violence'\]"):
        pins.check_workdir(config_from_dict(raw, "tiny"), tmp_path)


def test_categories_from_the_command_line_are_a_tuple(tmp_path):
    config = load_config(None, ["data.safety_exclude_categories=[privacy, risky behavior/violence]"])
    assert config.data.safety_exclude_categories == ("privacy", "risky behavior/violence")
    with pytest.raises(ConfigError, match="data.safety_exclude_categories must be a list, got str 'privacy'"):
        load_config(None, ["data.safety_exclude_categories=privacy"])


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_clean_configs_are_llava15_stage2_on_mix665k_minus_the_audit(size):
    config = load_config(CONFIGS / f"llava15_{size}_clean.yaml")
    mixed = load_config(CONFIGS / f"llava15_{size}_mixed.yaml")
    m, d, t, o = config.model, config.data, config.train, config.train.optimizer
    assert m == mixed.model and t == mixed.train  # LLaVA-1.5 stage 2 from its stage-1 parts, its hyper-parameters
    assert (o.learning_rate, t.epochs, t.global_batch_size, o.warmup_ratio, o.weight_decay, o.clip_norm) == \
        (2e-5, 1, 128, 0.03, 0.0, 1.0)
    assert (d.mixture, d.helpful, d.safety, d.max_length) == ("helpful", mixed.data.helpful, None, 2048)
    assert d.exclude == "audits/llava_v1_5_mix665k/flagged.jsonl" and d.safety_exclude_categories == ()
    assert (m.dtype, m.remat) == ("bfloat16", "full")


def write_eval(root: Path, test: list[dict], responses: list[dict]) -> tuple[Path, Path]:
    (root / "test.json").write_text(json.dumps(test))
    (root / "eval" / "vlguard_unsafes").mkdir(parents=True)
    (root / "eval" / "vlguard_unsafes" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                                                for r in responses))
    return root / "eval", root / "test.json"


def unsafe(i: str, category: str, subcategory: str) -> dict:
    return {"id": i, "image": f"{i}.jpg", "safe": False, "harmful_category": category,
            "harmful_subcategory": subcategory, "instr-resp": [{"instruction": "q", "response": "r"}]}


def test_unsafe_asr_per_category_from_judged_responses(tmp_path):
    test = [unsafe("p1", "privacy", "personal data"), unsafe("p2", "privacy", "personal data"),
            unsafe("p3", "privacy", "personal data"), unsafe("v1", "risky behavior", "violence"),
            unsafe("d1", "discrimination", "race"), unsafe("d2", "discrimination", "race"),
            {"id": "s1", "image": "s1.jpg", "safe": True, "instr-resp": []}]
    refused = {"p1": False, "p2": False, "p3": True, "v1": True, "d1": False, "d2": True}
    responses = [{"id": i, "prompt": "q", "response": "…", "category": "top-level", "refusal": r}
                 for i, r in refused.items()]
    eval_dir, test_json = write_eval(tmp_path, test, responses)
    scores = unsafe_asr_by_category(eval_dir, test_json)
    assert scores == {"discrimination/race": {"n": 2, "value": 50.0},
                      "privacy/personal data": {"n": 3, "value": 66.67},
                      "risky behavior/violence": {"n": 1, "value": 0.0}}
    rows = [{"safety_samples": 10, "safety_fraction": 1.0, "seed": 0, "unsafe_asr_by_category": scores}]
    assert table(rows, "privacy")[2:] == [
        "| safety samples | fraction | seed | discrimination/race | privacy/personal data (held out) | "
        "risky behavior/violence |", "|---|---|---|---|---|---|", "| 10 | 1 | 0 | 50.0 | 66.67 | 0.0 |"]


def test_responses_to_another_test_file_are_refused(tmp_path):
    eval_dir, test_json = write_eval(tmp_path, [unsafe("p1", "privacy", "personal data")],
                                     [{"id": "x9", "response": "sure", "refusal": False}])
    with pytest.raises(DataError, match=r"responses.jsonl: responses to \['x9'\] name no unsafe image of .*test.json"):
        unsafe_asr_by_category(eval_dir, test_json)
