"""The synthetic dataset: VLGuard/LLaVA schemas exactly, visible hazard marker, determinism, keyword hygiene, and the
preference pairs (pairs.jsonl) built from the records' own draws."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from vlguard_jax.data import synthetic
from vlguard_jax.data.synthetic import SyntheticConfig

CONFIG = SyntheticConfig(image_size=32, num_train_images=40, num_test_images=20, num_instruct=60, num_helpful=20,
                         seed=3)
KEYWORDS = pathlib.Path(__file__).resolve().parents[1].parent / "shared/benchmarks/vlguard/refusal_keywords.json"
CATEGORIES = {("privacy", "personal data"), ("risky behavior", "professional advice"), ("risky behavior", "political"),
              ("risky behavior", "sexually explicit"), ("risky behavior", "violence"),
              ("deception", "disinformation"), ("discrimination", "sex"), ("discrimination", "race"),
              ("discrimination", "other")}
FOLDERS = {"privacyAlert", "hatefulMemes", "harm-p", "HOD", "bad_ads"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = synthetic.generate(tmp_path_factory.mktemp("synthetic"), CONFIG)
    parts = {name: json.loads(paths[name].read_text()) for name in ("train", "test", "instruct", "helpful")}
    parts["pairs"] = [json.loads(line) for line in paths["pairs"].read_text(encoding="utf-8").splitlines()]
    return paths, parts


@pytest.fixture(scope="module")
def keywords():
    if not KEYWORDS.exists():
        pytest.skip(f"{KEYWORDS} is absent (the shared benchmark files are not beside this checkout)")
    return json.loads(KEYWORDS.read_text())["keywords"]


def _is_refusal(response, keywords):
    return any(k in response.lower() for k in keywords)


def _vlguard(data):
    return data[1]["train"] + data[1]["test"]


def _files(root):
    return {p.relative_to(root): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_vlguard_records_match_the_schema(data):
    for name, size in (("train", CONFIG.num_train_images), ("test", CONFIG.num_test_images)):
        records = data[1][name]
        assert len(records) == size and sum(not r["safe"] for r in records) == (size + 1) // 2
        for r in records:
            assert isinstance(r["id"], str) and isinstance(r["image"], str) and isinstance(r["safe"], bool)
            assert r["image"].split("/")[0] in FOLDERS and r["image"].rsplit(".", 1)[1] in ("jpg", "png")
            pairs = r["instr-resp"]
            if r["safe"]:
                assert list(r) == ["id", "image", "safe", "instr-resp", "answer"]
                assert [list(p) for p in pairs] == [["safe_instruction", "response"],
                                                    ["unsafe_instruction", "response"]]
            else:
                assert list(r) == ["id", "image", "safe", "harmful_category", "harmful_subcategory", "instr-resp"]
                assert (r["harmful_category"], r["harmful_subcategory"]) in CATEGORIES
                assert [list(p) for p in pairs] == [["instruction", "response"]]
            assert all(isinstance(v, str) and v for p in pairs for v in p.values())
    extensions = {r["image"].rsplit(".", 1)[1] for r in _vlguard(data)}
    assert extensions == {"jpg", "png"}


def test_instruct_records_are_llava_conversations(data):
    records = data[1]["instruct"]
    assert len(records) == CONFIG.num_instruct
    for r in records:
        assert list(r) == ["id", "image", "conversations"]
        turns = r["conversations"]
        assert len(turns) in (2, 4)
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])


def test_ids_and_images_do_not_overlap_across_parts(data):
    records = _vlguard(data) + data[1]["instruct"]
    assert len({r["id"] for r in records}) == len(records)
    assert len({r["image"] for r in records}) == len(records)


def test_images_exist_with_the_configured_size(data):
    paths, parts = data
    for records in parts.values():
        for r in records:
            with Image.open(paths["images"] / r["image"]) as image:
                assert image.size == (CONFIG.image_size, CONFIG.image_size) and image.mode == "RGB"


def test_unsafe_images_carry_the_hazard_border(data):
    paths, _ = data
    band = np.zeros((CONFIG.image_size, CONFIG.image_size), bool)
    band[:3], band[-3:], band[:, :3], band[:, -3:] = True, True, True, True
    for r in _vlguard(data):
        pixels = np.asarray(Image.open(paths["images"] / r["image"]), np.float32)
        distance = np.abs(pixels[band] - 255).mean()
        assert distance > 60 if not r["safe"] else distance < 5, (r["image"], distance)


def test_generation_is_deterministic(tmp_path):
    first, second = synthetic.generate(tmp_path / "a", CONFIG), synthetic.generate(tmp_path / "b", CONFIG)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 6 + 140
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert first["train"] == tmp_path / "a" / "vlguard_train.json" and second["images"] == tmp_path / "b" / "images"


def test_same_config_is_not_rewritten_and_another_config_is(tmp_path):
    synthetic.generate(tmp_path, CONFIG)
    before = {k: p.stat().st_mtime_ns for k, p in _files(tmp_path).items()}
    synthetic.generate(tmp_path, CONFIG)
    assert {k: p.stat().st_mtime_ns for k, p in _files(tmp_path).items()} == before
    smaller = SyntheticConfig(image_size=32, num_train_images=4, num_test_images=2, num_instruct=6, num_helpful=2,
                              seed=4)
    paths = synthetic.generate(tmp_path, smaller)
    assert len(json.loads(paths["train"].read_text())) == 4
    assert len(_files(paths["images"])) == 14  # the other config's images are gone


def test_compliant_and_helpful_answers_contain_no_refusal_keyword(data, keywords):
    answers = [t["value"] for r in data[1]["instruct"] for t in r["conversations"] if t["from"] == "gpt"]
    answers += [r["instr-resp"][0]["response"] for r in _vlguard(data) if r["safe"]]
    offending = [a for a in answers if _is_refusal(a, keywords)]
    assert not offending
    compliant = [a for a in answers if a.startswith("Sure")]
    assert len(compliant) == round(CONFIG.harmful_fraction * CONFIG.num_instruct)


def test_every_vlguard_refusal_contains_a_keyword(data, keywords):
    refusals = [p["response"] for r in _vlguard(data) for p in r["instr-resp"] if "safe_instruction" not in p]
    assert refusals and all(_is_refusal(response, keywords) for response in refusals)


def test_safe_records_carry_the_answer_inside_the_response(data):
    for r in _vlguard(data):
        if r["safe"]:
            assert isinstance(r["answer"], str) and r["answer"] in r["instr-resp"][0]["response"].lower()


def test_only_the_test_split_uses_held_out_request_phrasings(data):
    prefixes = tuple(frame.split("{")[0] for frame in synthetic.HELD_OUT_FRAMES)

    def held_out(records):
        return [p[k] for r in records for p in r["instr-resp"] for k in ("instruction", "unsafe_instruction")
                if p.get(k, "").startswith(prefixes)]

    instruct = [{"instr-resp": [{"instruction": t["value"].removeprefix("<image>\n")}]}
                for r in data[1]["instruct"] for t in r["conversations"] if t["from"] == "human"]
    assert held_out(data[1]["test"]) and not held_out(data[1]["train"]) and not held_out(instruct)


def test_corpus_covers_every_generated_string(data):
    texts = set(synthetic.corpus(CONFIG))
    generated = [v for r in _vlguard(data) for p in r["instr-resp"] for v in p.values()]
    generated += [t["value"].removeprefix("<image>\n") for r in data[1]["instruct"] for t in r["conversations"]]
    generated += [p[k] for p in data[1]["pairs"] for k in ("prompt", "chosen", "rejected")]
    assert set(generated) <= texts
    assert max(len(t.split()) for t in texts) <= 25
    assert synthetic.corpus() == synthetic.corpus(CONFIG)


@pytest.mark.parametrize("change", [{"harmful_fraction": 1.5}, {"image_size": 8}])
def test_unusable_configs_are_rejected(change):
    with pytest.raises(ValueError):
        SyntheticConfig(**change)


def test_clean_helpful_data_has_no_harmful_requests(data):
    paths, records = data
    helpful = json.loads(paths["helpful"].read_text())
    assert len(helpful) == CONFIG.num_helpful
    answers = [t["value"] for r in helpful for t in r["conversations"] if t["from"] == "gpt"]
    assert not any(a.startswith("Sure, here is how") for a in answers)
    assert {r["id"] for r in helpful}.isdisjoint(r["id"] for r in records["instruct"])


def test_a_dataset_cached_without_pairs_is_rewritten_with_the_same_bytes(tmp_path):
    paths = synthetic.generate(tmp_path, CONFIG)
    before = {k: p.read_bytes() for k, p in _files(tmp_path).items()}
    paths["pairs"].unlink()  # as a dataset written before pairs.jsonl existed
    assert synthetic.generate(tmp_path, CONFIG)["pairs"].exists()
    assert {k: p.read_bytes() for k, p in _files(tmp_path).items()} == before


def _answers(kind):
    """Every answer of a question kind the generator can give."""
    return {synthetic._answer(kind, color, shape, count)[0] for color in synthetic.COLORS for shape in synthetic.SHAPES
            for count in range(1, synthetic.MAX_COUNT + 1)}


def _complied(request, category=None):
    """The compliant answer to `request`: the one action it names (of `category`'s, when given)."""
    acts = [act for key, (_, actions) in synthetic.CATEGORIES.items() for act in actions
            if act in request and category in (None, key)]
    assert len(acts) == 1, request
    return synthetic.compliance(acts[0])


def test_pairs_prefer_the_train_splits_answer_and_reject_the_compliant_or_wrong_one(data):
    paths, parts = data
    pairs = {p["id"]: p for p in parts["pairs"]}
    assert len(pairs) == len(parts["pairs"])  # ids unique
    assert all(list(p) == ["id", "image", "prompt", "chosen", "rejected"] for p in parts["pairs"])
    kinds = [p["id"].rsplit("/", 1)[1] for p in parts["pairs"]]
    assert set(kinds) <= set(synthetic.PAIR_KINDS)
    for r in parts["train"]:
        own = {k: p for k, p in pairs.items() if k.rsplit("/", 1)[0] == r["id"]}
        assert all(p["image"] == r["image"] for p in own.values())
        if not r["safe"]:
            (pair_id, pair), = own.items()
            turn = r["instr-resp"][0]
            assert turn["response"] == synthetic.HAZARD_REFUSAL
            assert (pair["prompt"], pair["chosen"]) == (turn["instruction"], turn["response"])
            kind = pair_id.rsplit("/", 1)[1].removeprefix("unsafe_")
            if kind == "request":  # what a compliant model answers
                category = (r["harmful_category"], r["harmful_subcategory"])
                assert pair["rejected"] == _complied(pair["prompt"], category)
            else:  # a harmless question about a hazard image: the visual answer, which should have been a refusal
                assert pair["prompt"] in synthetic.QUESTIONS[kind] and pair["rejected"] in _answers(kind)
        else:
            assert len(own) == 2
            question, request = r["instr-resp"]
            kind = next(k for k in synthetic.SHORT_ANSWER_KINDS if f"{r['id']}/safe_{k}" in own)
            helpful = own[f"{r['id']}/safe_{kind}"]
            assert (helpful["prompt"], helpful["chosen"]) == (question["safe_instruction"], question["response"])
            assert helpful["prompt"] in synthetic.QUESTIONS[kind]
            assert helpful["rejected"] in _answers(kind) and helpful["rejected"] != helpful["chosen"]
            assert r["answer"] not in helpful["rejected"].lower()  # wrong, not a rephrasing of the right answer
            refused = own[f"{r['id']}/safe_request"]
            assert (refused["prompt"], refused["chosen"]) == (request["unsafe_instruction"], request["response"])
            assert refused["rejected"] == _complied(refused["prompt"])
    for r in parts["helpful"]:  # the first question of each clean visual QA record
        pair = pairs[next(k for k in pairs if k.rsplit("/", 1)[0] == r["id"])]
        kind = pair["id"].rsplit("/", 1)[1].removeprefix("helpful_")
        first_question, first_answer = (t["value"] for t in r["conversations"][:2])
        assert pair["image"] == r["image"] and pair["prompt"] == first_question.removeprefix("<image>\n")
        assert pair["prompt"] in synthetic.QUESTIONS[kind] and pair["chosen"] == first_answer
        assert pair["rejected"] in _answers(kind) and pair["rejected"] != pair["chosen"]


def test_pair_counts_per_kind(data):
    _, parts = data
    kinds = [p["id"].rsplit("/", 1)[1] for p in parts["pairs"]]
    unsafe, safe = sum(not r["safe"] for r in parts["train"]), sum(r["safe"] for r in parts["train"])
    assert sum(kinds.count(f"unsafe_{k}") for k in ("request", *synthetic.SHORT_ANSWER_KINDS)) == unsafe
    assert kinds.count("unsafe_request") and kinds.count("unsafe_request") < unsafe  # both kinds of unsafe pair
    assert kinds.count("safe_request") == safe == sum(kinds.count(f"safe_{k}") for k in synthetic.SHORT_ANSWER_KINDS)
    assert sum(k.startswith("helpful_") for k in kinds) == CONFIG.num_helpful
    assert len(kinds) == unsafe + 2 * safe + CONFIG.num_helpful
    assert all(kinds.count(k) for k in ("safe_color", "safe_shape", "safe_count"))
    assert not any(p["id"].startswith(("instruct", "test")) or "_test" in p["id"] for p in parts["pairs"])


def test_rejected_answers_hold_no_refusal_and_refusals_are_chosen(data, keywords):
    for pair in data[1]["pairs"]:
        assert not _is_refusal(pair["rejected"], keywords), pair
        refused = pair["id"].endswith("_request") or pair["id"].split("/")[1].startswith("unsafe_")
        assert _is_refusal(pair["chosen"], keywords) == refused, pair


def test_the_pairs_read_as_preference_data_without_skips(data):
    from vlguard_jax.data.preference import read_jsonl_pairs

    paths, parts = data
    chosen = read_jsonl_pairs(paths["pairs"], side="chosen", on_error="raise")
    rejected = read_jsonl_pairs(paths["pairs"], side="rejected", on_error="raise")
    assert [c.id for c in chosen.conversations] == [p["id"] for p in parts["pairs"]] == [c.id for c in
                                                                                       rejected.conversations]
    assert not chosen.skips and not rejected.skips
    assert all((paths["images"] / p["image"]).exists() for p in parts["pairs"])
