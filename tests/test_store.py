"""The tokenized store: rows equal `encode()`, a second start neither parses nor tokenizes, any change of file,
tokenizer or template rebuilds, and an interrupted build never passes for a complete store."""

import json

import numpy as np
import pytest

from data_fixtures import WORDS, tokenizer
from vlguard_jax.config import DataConfig
from vlguard_jax.data import sources, store
from vlguard_jax.data.chat import ChatTokenizer, SampleError
from vlguard_jax.data.recipes import training_data
from vlguard_jax.data.sources import read_llava
from vlguard_jax.data.store import Samples, SourceFile, Store, ensure, open_stores, store_path
from vlguard_jax.data.vocab import build_tokenizer


def chat_of(tok=None, template="vicuna_v1"):
    return ChatTokenizer(tok or tokenizer(), template, num_image_tokens=4, max_length=128)


@pytest.fixture()
def llava_file(tmp_path):
    """Image and text-only records of 1-3 rounds, one too long to train on, one unreadable, one repeated id."""
    records = []
    for i in range(14):
        turns = [{"from": speaker, "value": " ".join(WORDS[i + r:i + r + 5 + 3 * (speaker == "gpt")])}
                 for r in range(1 + i % 3) for speaker in ("human", "gpt")]
        record = {"id": f"s{i}", "conversations": turns}
        if i % 2 == 0:
            record["image"] = f"coco/{i}.jpg"
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(record)
    records[5]["conversations"][1]["value"] = " ".join(WORDS * 4)  # over max_length: a counted skip
    records.append({"id": "unanswered", "conversations": [{"from": "human", "value": "why"}]})
    records.append({**records[3], "id": "s3"})
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return path


def every_sample(path, chat, cache_dir):
    built = Store(ensure(SourceFile.of("llava", path), chat, cache_dir))
    return built, *Samples.select([(built, built.ids)])


def tokens(samples):
    return samples[0]["encoded"].input_ids.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_rows_equal_encode_and_skips_keep_their_reasons(llava_file, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(store, "CHUNK", 4)  # several record batches (and worker tasks): rows cross chunk borders
    chat = chat_of()
    built = Store(ensure(SourceFile.of("llava", llava_file), chat, tmp_path / "cache", workers=workers))
    records = read_llava(llava_file)
    assert built.ids == [c.id for c in records.conversations] and "s3#2" in built.ids
    assert built.reader_skips == records.skips and built.meta["duplicate_ids"] == records.duplicate_ids == ["s3"]
    for row, conversation in enumerate(records.conversations):
        try:
            encoded = chat.encode(conversation, expand_image=False)
        except SampleError as e:
            assert built.skipped[row] == str(e) and built.lengths[row] == 0
            continue
        got = built.row(row)
        assert (got["id"], got["image"], got["source"]) == (conversation.id, conversation.image, "llava")
        np.testing.assert_array_equal(got["encoded"].input_ids, encoded.input_ids)
        np.testing.assert_array_equal(got["encoded"].labels, encoded.labels)
        assert built.lengths[row] == len(chat.expand(encoded).input_ids)
    assert list(built.skipped) == [5] and "more than max_length 128" in built.skipped[5]


def test_a_second_start_neither_parses_json_nor_calls_the_tokenizer(llava_file, tmp_path, monkeypatch):
    config = DataConfig(helpful=str(llava_file), mixture="helpful", max_skip_fraction=0.2)
    first = training_data(config, tmp_path / "run", chat_of())

    def refuse(*args, **kwargs):
        raise AssertionError("called on a cached start")

    chat = chat_of()
    monkeypatch.setattr(sources._Reader, "load_list", refuse)
    monkeypatch.setattr(type(chat.tokenizer), "__call__", refuse)
    monkeypatch.setattr(ChatTokenizer, "encode", refuse)
    again = training_data(config, tmp_path / "run", chat)
    assert again.mix.manifest == first.mix.manifest
    assert [s.id for s in again.sample_skips] == ["s5"] and again.skips == first.skips
    assert len(again.samples) == len(first.samples) == 14
    for i in range(len(first.samples)):
        ours, theirs = again.samples[i], first.samples[i]
        assert ours["id"] == theirs["id"]
        np.testing.assert_array_equal(ours["encoded"].input_ids, theirs["encoded"].input_ids)


def test_a_changed_file_tokenizer_or_template_builds_another_store(llava_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    builds, build = [], store.build
    monkeypatch.setattr(store, "build", lambda path, *args: builds.append(path) or build(path, *args))
    first, samples, _ = every_sample(llava_file, chat_of(), cache)
    assert len(builds) == 1
    every_sample(llava_file, chat_of(), cache)
    assert len(builds) == 1  # unchanged: reused
    other_tokenizer = build_tokenizer([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))], vocab_size=420)
    _, other, _ = every_sample(llava_file, chat_of(other_tokenizer), cache)
    assert len(builds) == 2 and tokens(other) != tokens(samples)
    _, llava_template, _ = every_sample(llava_file, chat_of(template="llava_v1"), cache)
    assert len(builds) == 3 and tokens(llava_template) != tokens(samples)
    llava_file.write_text(llava_file.read_text().replace('"s1"', '"renamed"'))
    edited, _, _ = every_sample(llava_file, chat_of(), cache)
    assert len(builds) == 4 and edited.ids[1] == "renamed" and first.ids[1] == "s1"
    assert len({p.name for p in cache.iterdir()}) == 4


@pytest.mark.parametrize("death", ["exception", "killed"])
def test_an_interrupted_build_leaves_no_store_that_looks_complete(llava_file, tmp_path, monkeypatch, death):
    monkeypatch.setattr(store, "CHUNK", 4)  # the first record batch is written before the failure
    cache, chat, calls = tmp_path / "cache", chat_of(), []
    encode = ChatTokenizer.encode

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 9:
            raise RuntimeError("host lost")
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(ChatTokenizer, "encode", failing)
    if death == "killed":  # a killed process runs no clean-up: its temporary directory stays
        monkeypatch.setattr(store.shutil, "rmtree", lambda *args, **kwargs: None)
    file = SourceFile.of("llava", llava_file)
    with pytest.raises(RuntimeError, match="host lost"):
        ensure(file, chat, cache, workers=0)  # in this process, where encode fails
    left = [p.name for p in cache.iterdir()]
    assert not store_path(file, chat, cache).exists()
    assert all(name.startswith(".") and name.endswith(".tmp") for name in left) and len(left) == (death == "killed")
    monkeypatch.undo()
    rebuilt = Store(ensure(file, chat, cache))
    assert rebuilt.ids == [c.id for c in read_llava(llava_file).conversations]


def test_hosts_wait_for_the_primary_and_build_their_own_copy_on_a_host_local_disk(llava_file, tmp_path):
    files, chat = {"helpful": SourceFile.of("llava", llava_file)}, chat_of()
    barriers = []
    shared = open_stores(files, chat, tmp_path / "shared", primary=True, barrier=barriers.append)
    assert barriers == ["vlguard-jax: tokenized data built by the primary process",
                        "vlguard-jax: tokenized data ready on every host"]
    local = open_stores(files, chat, tmp_path / "local", primary=False)  # the primary wrote to another disk
    assert local["helpful"].ids == shared["helpful"].ids
    assert local["helpful"].path.name == shared["helpful"].path.name  # the key, not the path, names it
