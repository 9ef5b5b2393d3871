"""No silent empty training: images are found before step 0, failures past a limit stop the run naming them, empty
steps and every run's totals are reported, and each data part reads its images from its own root."""

import copy
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fixtures import tokenizer
from train_fixtures import TINY, write_config
from vlguard_jax.cli import main
from vlguard_jax.config import DataConfig, load_config
from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.images import ImageConfig, ImageSource
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, steps_per_epoch
from vlguard_jax.data.recipes import synthetic_dataset, training_data
from vlguard_jax.data.sources import DataError
from vlguard_jax.data.store import Store
from vlguard_jax.train import loop
from vlguard_jax.train.loop import TrainingError, train
from vlguard_jax.train.metrics_log import read_metrics
from vlguard_jax.train.totals import Totals

CORRUPT = ("instruct/00003.png", "instruct/00017.png", "instruct/00041.png")


def tiny_config(directory, overrides=(), **data):
    """TINY trained on the synthetic instruction data alone (`num_instruct` samples), one epoch, `data` replaced."""
    raw = copy.deepcopy(TINY)
    raw["data"]["synthetic_options"]["num_instruct"] = data.pop("num_instruct", 48)
    raw["data"].update({"mixture": "helpful", **data})
    raw["train"].update({"epochs": 1, "max_steps": None})
    return load_config(write_config(directory, raw), list(overrides))


def with_corrupt_images(config, workdir):
    """The run's synthetic data, written before its first start, with the images in CORRUPT overwritten by garbage."""
    images = synthetic_dataset(config.data, workdir)["images"]
    for relpath in CORRUPT:
        (images / relpath).write_bytes(b"not an image at all" * 8)
    return images


def test_missing_reads_a_listing_or_an_index_never_an_image(tmp_path, monkeypatch):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for relpath in ("a.png", "sub/b.png"):
        (root / relpath).write_bytes(b"garbage: present is all the check asks")
    (root / "sub" / "folder.png").mkdir()
    with zipfile.ZipFile(tmp_path / "nested.zip", "w") as archive:  # every member under one top folder, as train.zip
        archive.writestr("train/a.png", b"x")
        archive.writestr("train/sub/b.png", b"x")
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("an image was opened"))
    asked = ["a.png", "./sub/b.png", "sub//b.png", "sub/c.png", "nowhere/a.png", "../images/a.png", "/abs.png", "",
             "sub/folder.png", "sub"]
    absent = ["sub/c.png", "nowhere/a.png", "../images/a.png", "/abs.png", "", "sub/folder.png", "sub"]
    assert ImageSource(root).missing(asked) == absent
    assert ImageSource(tmp_path / "nested.zip").missing(asked) == absent


def test_an_empty_image_root_stops_the_run_before_any_set_up_naming_root_count_and_paths(tmp_path, monkeypatch,
                                                                                        capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(loop, "build", lambda *args, **kwargs: pytest.fail("the model was set up"))
    path = write_config(tmp_path)  # TINY: posthoc, VLGuard-format safety data beside instruction data
    code = main(["train", "--config", str(path), "--workdir", str(tmp_path / "work"),
                 f"data.safety_images={empty}"])
    error = capsys.readouterr().err
    assert code != 0 and error.startswith("error: data.safety_images")
    named = json.loads((tmp_path / "work" / "data" / "vlguard_train.json").read_text())
    images = {record["image"] for record in named}
    assert f"{empty}: {len(images)} of the {len(images)} images the safety samples name are not there" in error
    shown = re.findall(r"'([^']+)'", error.split("first 5: ")[1])
    assert len(shown) == 5 and set(shown) <= images
    assert "data.max_missing_images=0" in error
    assert not (tmp_path / "work" / "metrics.jsonl").exists()


def test_corrupt_images_past_max_image_failures_stop_the_run_naming_them(tmp_path):
    config = tiny_config(tmp_path, ["data.max_image_failures=0.02"], num_instruct=50)  # 3 of 50 corrupt
    workdir = tmp_path / "work"
    with_corrupt_images(config, workdir)
    with pytest.raises(TrainingError) as stopped:
        train(config, workdir, progress=False)
    message = str(stopped.value)
    named = re.findall(r"image '([^']+)' under", message)
    count = int(re.match(r"(\d+) rows' images failed to load by step (\d+)", message).group(1))
    assert named and set(named) <= set(CORRUPT) and count == len(named)  # one host: it names every failure
    assert "corrupt or truncated" in message and "data.max_image_failures=0.02 of the run's 48 rows" in message
    step = int(re.search(r"by step (\d+)", message).group(1))
    assert step < 6 and [r["step"] for r in read_metrics(workdir)] == list(range(1, step))  # stopped at its sync


def supervised_tokens(workdir, skipped_images=()):
    """The supervised (shifted) label count of every stored sample whose image is not in `skipped_images`, read
    from the tokenized stores and the data file (not from the run's counters)."""
    images = {r["id"]: r["image"] for r in json.loads((workdir / "data" / "instruct.json").read_text())}
    total = 0
    for path in (workdir / "cache").glob("[!.]*"):
        store = Store(path)
        for row in range(len(store)):
            sample = store.row(row)
            if images[sample["id"]] not in skipped_images:
                total += int((sample["encoded"].labels[1:] != IGNORE).sum())
    return total


def test_failures_within_the_limit_are_counted_in_totals_that_survive_a_resume(tmp_path):
    overrides = ["data.max_image_failures=0.25", "train.checkpoint_every=3"]
    workdir = tmp_path / "work"
    with_corrupt_images(tiny_config(tmp_path, overrides), workdir)
    first = train(tiny_config(tmp_path, overrides + ["train.max_steps=3"]), workdir, progress=False)  # then resumed
    config = tiny_config(tmp_path, overrides)
    assert (first.steps, first.totals.samples) == (3, 24)
    result = train(config, workdir, progress=False)
    expected = Totals(samples=48, tokens=supervised_tokens(workdir, CORRUPT), image_failures=3, empty_steps=0)
    assert (result.status, result.steps, result.totals) == ("finished", 6, expected)
    last = read_metrics(workdir)[-1]
    assert (last["step"], last["image_failures"], last["empty_steps"]) == (6, 3, 0)


def test_a_run_that_trains_on_nothing_says_so_in_its_metrics_and_its_totals_line(tmp_path, capsys, caplog):
    """The issue's run: every image missing (here allowed, to see the run through); each step has no supervised
    token, and the run's last line says so."""
    empty = tmp_path / "empty"
    empty.mkdir()
    path = write_config(tmp_path, copy.deepcopy(TINY))
    code = main(["train", "--config", str(path), "--workdir", str(tmp_path / "work"), "data.mixture=helpful",
                 f"data.helpful_images={empty}", "data.max_missing_images=1", "data.max_image_failures=1",
                 "train.max_steps=4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1] == "totals: 32 samples, 0 supervised tokens, 32 image failures, 4 empty steps"
    assert f"data.helpful_images {empty}: 48 of the 48 images the helpful samples name are not there" in caplog.text
    records = read_metrics(tmp_path / "work")
    assert [(r["tokens"], r["empty_steps"], r["image_failures"]) for r in records] == [
        (0, step, 8 * step) for step in range(1, 5)]


@pytest.mark.parametrize("safety_format", ["vlguard", "llava"])
def test_each_data_part_reads_its_images_from_its_own_root_whatever_its_format(tmp_path, safety_format):
    """Safety data (VLGuard's own format, or converted to LLaVA's) under one root, LLaVA-format helpful data under
    another: every image of an epoch loads from its part's root."""
    paths = synthetic.generate(tmp_path / "data", synthetic.SyntheticConfig(
        image_size=16, num_train_images=12, num_test_images=1, num_instruct=12, num_helpful=12))
    safety_root, helpful_root = tmp_path / "safety", tmp_path / "helpful"
    shutil.move(paths["images"], safety_root)
    helpful_root.mkdir()
    shutil.move(safety_root / "helpful", helpful_root / "helpful")
    safety = paths["train"] if safety_format == "vlguard" else paths["instruct"]  # instruct: LLaVA-format
    config = DataConfig(safety=str(safety), safety_format=safety_format, safety_images=str(safety_root),
                        helpful=str(paths["helpful"]), helpful_images=str(helpful_root), mixture="mixed")
    chat = ChatTokenizer(tokenizer(), "vicuna_v1", num_image_tokens=4, max_length=256)
    (tmp_path / "run").mkdir()
    data = training_data(config, tmp_path / "run", chat)
    roots = {Path(store.meta["built_from"]).name: root.root for store, root in zip(data.samples.stores, data.images)}
    assert roots == {safety.name: safety_root.resolve(), "helpful.json": helpful_root.resolve()}
    pipeline = PipelineConfig(global_batch_size=8, buckets=(256,), image=ImageConfig(size=16))
    batches = iter(build_pipeline(data.samples, chat, data.images, pipeline))
    rows = [next(batches) for _ in range(steps_per_epoch(data.samples, pipeline))]
    assert not any(batch["image_failed"].any() for batch in rows)
    with_image = np.concatenate([(batch["input_ids"] == chat.image_token_id).any(1) for batch in rows])
    assert with_image.sum() >= 16  # both parts' images were read (12 + 12 samples with images, 24 rows an epoch)


def test_a_part_with_images_and_no_root_is_refused_naming_its_file(tmp_path):
    paths = synthetic.generate(tmp_path / "data", synthetic.SyntheticConfig(
        image_size=16, num_train_images=2, num_test_images=1, num_instruct=8))
    chat = ChatTokenizer(tokenizer(), "vicuna_v1", num_image_tokens=4, max_length=256)
    (tmp_path / "run").mkdir()
    data = training_data(DataConfig(helpful=str(paths["instruct"]), mixture="helpful"), tmp_path / "run", chat)
    assert data.images == [None]
    with pytest.raises(DataError, match=f"samples of {paths['instruct']} have images but no image root was given"):
        build_pipeline(data.samples, chat, data.images, PipelineConfig(global_batch_size=8, buckets=(256,)))
