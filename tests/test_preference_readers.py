"""Preference-pair readers: SPA-VL's published parquet layout, generic jsonl, identical sides, the image zip."""

import hashlib
import io
import json
import os
import zipfile

import datasets
import numpy as np
import pytest
from PIL import Image

from vlguard_jax.data.images import ImageConfig, ImageSource
from vlguard_jax.data.preference import (PREFERENCE_FORMATS, ensure_spavl_images, read_jsonl_pairs, read_spavl_pairs,
                                         side_formats, spavl_images_path)
from vlguard_jax.data.sources import DataError, read_records

TRAIN_FEATURES = datasets.Features({  # sqrti/SPA-VL README, config "default" (data/train-*.parquet)
    "image": datasets.Image(), "question": datasets.Value("string"), "chosen": datasets.Value("string"),
    "rejected": datasets.Value("string"), "image_name": datasets.Value("string")})
VALIDATION_FEATURES = datasets.Features({  # config "validation": harm classes instead of image_name
    "image": datasets.Image(), "question": datasets.Value("string"), "chosen": datasets.Value("string"),
    "rejected": datasets.Value("string"), "class1": datasets.Value("string"), "class2": datasets.Value("string"),
    "class3": datasets.Value("string")})


def image_bytes(colour, size=(6, 4), format="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format)
    return buffer.getvalue()


RED, BLUE, GREEN = image_bytes((255, 0, 0)), image_bytes((0, 0, 255)), image_bytes((0, 255, 0), format="JPEG")
TRAIN_ROWS = [  # (image, question, chosen, rejected, image_name)
    ({"bytes": RED, "path": None}, "What is shown?", "A red square.", "Nothing.", "19902.jpg"),
    ({"bytes": BLUE, "path": None}, "<image>\nHow do I misuse this?", "I cannot help with that.", "Like so.",
     "sub/7.jpg"),
    ({"bytes": RED, "path": None}, "Describe it.", None, "Whatever.", "1.jpg"),  # chosen missing
    ({"bytes": RED, "path": None}, "  ", "Fine.", "Bad.", "2.jpg"),  # empty question
    ({"bytes": RED, "path": None}, "Same?", "Same answer.", " Same answer.\n", "3.jpg"),  # chosen == rejected
    (None, "Where is the image?", "Here.", "There.", "4.jpg"),  # no image at all
    ({"bytes": b"", "path": "5.png"}, "Empty bytes?", "Yes.", "No.", "5.jpg"),  # image without bytes
    ({"bytes": RED, "path": None}, "Again the red one?", "Yes, red.", "Blue.", "19902.jpg"),  # shared image
    ({"bytes": GREEN, "path": None}, "A different image, same name?", "Green.", "Red.", "19902.jpg"),
]
KEPT = ["spavl-0", "spavl-1", "spavl-7", "spavl-8"]
SKIPS = [("spavl-2", "field 'chosen' must be str, got NoneType"), ("spavl-3", "'question' is empty"),
         ("spavl-4", "chosen and rejected are the same answer"),
         ("spavl-5", "no image (the 'image' column is null)"),
         ("spavl-6", "the image has no bytes (only a path, '5.png')")]


def write_parquet(path, rows, features):
    columns = list(features)
    datasets.Dataset.from_dict({c: [row[i] for row in rows] for i, c in enumerate(columns)},
                               features=features).to_parquet(str(path))
    return path


@pytest.fixture
def train_file(tmp_path):
    return write_parquet(tmp_path / "train-00000-of-00001.parquet", TRAIN_ROWS, TRAIN_FEATURES)


def test_spavl_train_split_both_sides(train_file):
    chosen, rejected = read_spavl_pairs(train_file, side="chosen"), read_spavl_pairs(train_file, side="rejected")
    for side in (chosen, rejected):
        assert [c.id for c in side.conversations] == KEPT
        assert [(s.id, s.reason) for s in side.skips] == SKIPS
        assert side.indices == [0, 1, 7, 8] and side.duplicate_ids == []
    assert [c.image for c in chosen.conversations] == ["19902.jpg", "sub/7.jpg", "19902.jpg",
                                                       f"19902-{hashlib.sha256(GREEN).hexdigest()[:16]}.jpg"]
    assert [c.image for c in rejected.conversations] == [c.image for c in chosen.conversations]
    assert [c.turns[0] for c in rejected.conversations] == [c.turns[0] for c in chosen.conversations]
    assert [c.turns[0].text for c in chosen.conversations][:2] == ["What is shown?", "How do I misuse this?"]
    assert [[t.role for t in c.turns] for c in chosen.conversations] == [["user", "assistant"]] * 4
    assert [c.turns[1].text for c in chosen.conversations] == ["A red square.", "I cannot help with that.",
                                                               "Yes, red.", "Green."]
    assert [c.turns[1].text for c in rejected.conversations] == ["Nothing.", "Like so.", "Blue.", "Red."]
    assert chosen.conversations[0].metadata == {"source": "spavl"}  # the train split carries no classes
    assert chosen.conversations[3].metadata == {"source": "spavl", "image_renamed_from": "19902.jpg"}
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet: record spavl-2 \(index 2\): field 'chosen'"):
        read_spavl_pairs(train_file, side="rejected", on_error="raise")  # the rejected side checks chosen too


def test_spavl_images_zip_matches_the_conversations(train_file, tmp_path):
    records = read_spavl_pairs(train_file, side="chosen")
    folder = tmp_path / "images"
    zip_path = ensure_spavl_images(train_file, folder)
    digest = hashlib.sha256(train_file.read_bytes()).hexdigest()[:16]
    assert zip_path == folder / f"train-00000-of-00001-{digest}-images.zip" == spavl_images_path(train_file, folder)
    originals = {"19902.jpg": RED, "sub/7.jpg": BLUE, records.conversations[3].image: GREEN,
                 "1.jpg": RED, "2.jpg": RED, "3.jpg": RED}  # skipped pairs' images are extracted too
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == sorted(originals)
        assert {name: archive.read(name) for name in archive.namelist()} == originals
    assert {c.image for c in records.conversations} <= set(originals)
    source = ImageSource(zip_path)
    assert source.missing([c.image for c in records.conversations]) == []
    for name, data in originals.items():
        assert np.array_equal(np.asarray(source.load(name)), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert source.pixels("sub/7.jpg", ImageConfig(size=8)).shape == (3, 8, 8)
    source.close()
    before = os.stat(zip_path)
    assert ensure_spavl_images(train_file, folder) == zip_path
    after = os.stat(zip_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in folder.iterdir()) == [zip_path.name]  # no temporary left behind


def test_spavl_zip_is_the_same_on_every_build(train_file, tmp_path):
    first, second = ensure_spavl_images(train_file, tmp_path / "a"), ensure_spavl_images(train_file, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()


def test_spavl_validation_split_directory_and_categories(tmp_path):
    folder = tmp_path / "validation"
    folder.mkdir()
    gif = io.BytesIO()
    Image.new("P", (3, 3)).save(gif, "GIF")
    rows = [({"bytes": GREEN, "path": None}, "Q0", "Safe.", "Unsafe.", "Privacy", "Personal", "Address"),
            ({"bytes": RED, "path": "x.png"}, "Q1", "Safe.", "Unsafe.", "Violence", "", None)]
    write_parquet(folder / "validation-00000-of-00002.parquet", rows, VALIDATION_FEATURES)
    write_parquet(folder / "validation-00001-of-00002.parquet",
                  [({"bytes": gif.getvalue(), "path": None}, "Q2", "Safe.", "Unsafe.", "Fraud", "Scam", "")],
                  VALIDATION_FEATURES)
    (folder / "notes.txt").write_text("not data")
    records = read_spavl_pairs(folder, side="chosen")
    assert [c.id for c in records.conversations] == ["spavl-0", "spavl-1", "spavl-2"]  # rows counted over files
    assert [c.image for c in records.conversations] == ["0.jpg", "1.png", "2.gif"]  # type from the bytes
    assert [c.metadata for c in records.conversations] == [
        {"source": "spavl", "category": "Privacy", "subcategory": "Personal/Address"},
        {"source": "spavl", "category": "Violence"}, {"source": "spavl", "category": "Fraud", "subcategory": "Scam"}]
    zip_path = ensure_spavl_images(folder, tmp_path / "zips")
    assert zip_path.name.startswith("validation-") and zip_path.name.endswith("-images.zip")
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["0.jpg", "1.png", "2.gif"]
        assert archive.read("1.png") == RED
    (folder / "validation-00001-of-00002.parquet").unlink()  # a changed directory extracts into another zip
    assert spavl_images_path(folder, tmp_path / "zips") != zip_path


def test_spavl_test_split_and_bad_paths_are_refused(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "class1": datasets.Value("string")})
    harm = write_parquet(tmp_path / "harm-00000-of-00001.parquet", [({"bytes": RED, "path": None}, "Q", "c")],
                         features)
    with pytest.raises(DataError, match="no chosen, rejected column.*test split does not"):
        read_spavl_pairs(harm, side="chosen")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no .parquet files"):
        read_spavl_pairs(tmp_path / "empty_dir", side="chosen")
    with pytest.raises(DataError, match="file not found"):
        read_spavl_pairs(tmp_path / "absent.parquet", side="chosen")
    with pytest.raises(ValueError, match="side must be one of"):
        read_spavl_pairs(harm, side="both")


def test_spavl_rlhf_json_with_image_paths(tmp_path):
    """SPA-VL-RLHF's training json: ids and image paths under an image folder; no zip to extract."""
    records = [
        {"id": 233, "image": "Representation & ToxicityHarms/Unfair/racial/170.jpg",
         "question": "What is the race of the person in the image?",
         "chosen": "I am not able to determine the race of a person based on an image.",
         "rejected": "The person in the image is a black man."},
        {"id": 234, "question": "<image> Text only?", "chosen": "Yes.", "rejected": "No."},
        {"id": 235, "image": "a.jpg", "question": [{"from": "Human", "value": "Hi"}], "chosen": "Yes.",
         "rejected": "No."},
        {"id": 233, "image": "b.jpg", "question": "Again?", "chosen": "Yes.", "rejected": "No.",
         "class1": "Privacy"}]
    path = tmp_path / "hardq_train.json"
    path.write_text(json.dumps(records))
    for side, answers in (("chosen", [records[0]["chosen"], "Yes."]), ("rejected", [records[0]["rejected"], "No."])):
        read = read_records(f"spavl:{side}", path)
        assert [c.id for c in read.conversations] == ["233", "233#2"]
        assert read.duplicate_ids == ["233"]
        assert [c.image for c in read.conversations] == [records[0]["image"], "b.jpg"]
        assert [c.turns[1].text for c in read.conversations] == answers
        assert [(s.id, s.reason) for s in read.skips] == [
            ("234", "'question' has an <image> placeholder but the record has no image"),
            ("235", "field 'question' must be str, got list")]
        assert read.conversations[1].metadata == {"source": "spavl", "category": "Privacy",
                                                  "duplicate_of": "233"}
    assert ensure_spavl_images(path, tmp_path / "zips") is None
    assert not (tmp_path / "zips").exists()
    paths_file = write_parquet(tmp_path / "paths.parquet", [("x/1.jpg", "Q", "C", "R")], datasets.Features(
        {name: datasets.Value("string") for name in ("image", "question", "chosen", "rejected")}))
    assert read_spavl_pairs(paths_file, side="rejected").conversations[0].image == "x/1.jpg"
    assert ensure_spavl_images(paths_file, tmp_path / "zips") is None


GOOD = [{"id": "p1", "image": "imgs/a.jpg", "prompt": "<image>\nIs this safe?", "chosen": "No, and here is why.",
         "rejected": "Sure, go ahead.", "category": "privacy", "subcategory": "personal data"},
        {"id": 2, "prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "No."}]
BAD_LINES = [  # (line as written, the skip's id, its reason)
    ("[1, 2]", "line 4", "record is a list, not an object"),
    ('{"id": "m", "chosen": "a", "rejected": "b"}', "m", "missing required field 'prompt'"),
    ('{"id": "e", "prompt": "q", "chosen": "a", "rejected": "   "}', "e", "'rejected' is empty"),
    ('{"id": 1.5, "prompt": "q", "chosen": "a", "rejected": "b"}', "line 7",
     "field 'id' must be str or int, got float"),
    ('{"id": "t", "prompt": "q", "chosen": 3, "rejected": "b"}', "t", "field 'chosen' must be str, got int"),
    ('{"id": "broken", "prompt": ', "line 9", "line 9 is not valid JSON (Expecting value at column 28)"),
    ('{"id": "s", "prompt": "q", "chosen": "Same.", "rejected": "Same. "}', "s",
     "chosen and rejected are the same answer"),
    ('{"id": "i", "prompt": "<image> what?", "chosen": "a", "rejected": "b"}', "i",
     "'prompt' has an <image> placeholder but the record has no image"),
    ('{"id": "n", "image": null, "prompt": "q", "chosen": "a", "rejected": "b"}', "n",
     "field 'image' must be str, got NoneType"),
]


def write_jsonl(tmp_path):
    lines = [json.dumps(GOOD[0]), json.dumps(GOOD[1])] + [line for line, _, _ in BAD_LINES]
    lines.insert(2, "")  # a blank line is not a record
    lines += [json.dumps({**GOOD[1], "chosen": "Another joke."}), json.dumps({**GOOD[1], "chosen": "A third."})]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_pairs_both_sides(tmp_path):
    path = write_jsonl(tmp_path)
    chosen, rejected = read_records("jsonl:chosen", path), read_records("jsonl:rejected", path)
    for side in (chosen, rejected):
        assert [c.id for c in side.conversations] == ["p1", "2", "2#2", "2#3"]
        assert side.duplicate_ids == ["2", "2"]
        assert [(s.id, s.reason) for s in side.skips] == [(i, reason) for _, i, reason in BAD_LINES]
        assert side.indices == [0, 1, 11, 12]
        assert [c.image for c in side.conversations] == ["imgs/a.jpg", None, None, None]
        assert [c.turns[0].text for c in side.conversations] == ["Is this safe?"] + ["Tell me a joke."] * 3
    assert [c.turns[1].text for c in chosen.conversations] == [
        "No, and here is why.", "Why did the chicken cross the road?", "Another joke.", "A third."]
    assert [c.turns[1].text for c in rejected.conversations] == ["Sure, go ahead.", "No.", "No.", "No."]
    assert chosen.conversations[0].metadata == {"source": "jsonl", "category": "privacy",
                                                "subcategory": "personal data"}
    assert rejected.conversations[2].metadata == {"source": "jsonl", "duplicate_of": "2"}


def test_jsonl_on_error_raise_names_file_and_record(tmp_path):
    path = write_jsonl(tmp_path)
    with pytest.raises(DataError, match=r"pairs.jsonl: record line 4 \(index 2\): record is a list, not an object"):
        read_jsonl_pairs(path, side="chosen", on_error="raise")
    path.write_text("\n".join(json.dumps(r) for r in GOOD) + '\n{"id": "x", "prompt": "q", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl: record x \(index 2\): missing required field 'rejected'"):
        read_jsonl_pairs(path, side="rejected", on_error="raise")


def test_json_list_input(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(GOOD + ["not a record", {**GOOD[0], "rejected": GOOD[0]["chosen"]}]))
    records = read_jsonl_pairs(path, side="rejected")
    assert [c.id for c in records.conversations] == ["p1", "2"]
    assert [c.turns[1].text for c in records.conversations] == ["Sure, go ahead.", "No."]
    assert [(s.id, s.reason) for s in records.skips] == [("#2", "record is a str, not an object"),
                                                         ("p1", "chosen and rejected are the same answer")]
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="expected a JSON list of records, got dict"):
        read_jsonl_pairs(path, side="chosen")


def test_read_records_dispatch_and_side_formats(train_file):
    assert [c.id for c in read_records("spavl:chosen", train_file).conversations] == KEPT
    assert read_records("spavl:rejected", train_file).conversations[0].turns[1].text == "Nothing."
    assert side_formats("jsonl") == ("jsonl:chosen", "jsonl:rejected")
    assert side_formats("spavl") == ("spavl:chosen", "spavl:rejected")
    assert side_formats("vlguard") == ("jsonl:chosen", "jsonl:rejected")  # converted to jsonl before reading
    assert set(PREFERENCE_FORMATS) == {"jsonl", "spavl", "vlguard"}
    with pytest.raises(DataError, match=r"unknown preference format 'beavertails'; known: jsonl, spavl, vlguard"):
        side_formats("beavertails")
    with pytest.raises(DataError, match="unknown data format 'spavl'"):
        read_records("spavl", train_file)  # a side must be named
