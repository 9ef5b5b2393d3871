"""The Grain pipeline: static shapes, exact resume, disjoint host shards, bad images counted not crashing."""

import os

import numpy as np
import pytest

from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.images import ImageConfig, ImageSource
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, steps_per_epoch
from vlguard_jax.data.sources import read_vlguard
from vlguard_jax.data.store import Samples, SourceFile, open_stores
from vlguard_jax.data.vocab import build_tokenizer

NUM_IMAGE_TOKENS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    paths = synthetic.generate(root, synthetic.SyntheticConfig(image_size=32, num_train_images=40,
                                                               num_test_images=4, num_instruct=40, seed=1))
    tokenizer = build_tokenizer(synthetic.corpus(), vocab_size=400)
    chat = ChatTokenizer(tokenizer, "vicuna_v1", NUM_IMAGE_TOKENS, max_length=256)
    samples, skips = prepare(paths, chat, root / "cache", ("train", "instruct"))
    assert not skips and len(samples) == 80
    return samples, chat, ImageSource(paths["images"]), paths


def prepare(paths, chat, cache_dir, names):
    """Every sample of the synthetic files `names`, tokenized into stores."""
    files = {name: SourceFile.of("vlguard" if name == "train" else "llava", paths[name]) for name in names}
    return Samples.select([(store, store.ids) for store in open_stores(files, chat, cache_dir).values()])


def config(**kw):
    return PipelineConfig(**{"global_batch_size": 8, "buckets": (128, 256), "num_epochs": 2, "seed": 5,
                             "workers": 0, "image": ImageConfig(size=32), **kw})


def batches(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_have_static_bucketed_shapes_and_row_aligned_images(dataset):
    samples, chat, images, _ = dataset
    for batch in batches(iter(build_pipeline(samples, chat, images, config())), 6):
        length = batch["input_ids"].shape[1]
        assert length in (128, 256) and batch["input_ids"].shape == (8, length)
        assert batch["pixel_values"].shape == (8, 3, 32, 32)
        assert (batch["labels"][~batch["attention_mask"]] == IGNORE).all()
        image_rows = (batch["input_ids"] == chat.image_token_id).sum(1)
        assert set(image_rows) <= {0, NUM_IMAGE_TOKENS}
        has_pixels = np.abs(batch["pixel_values"]).sum(axis=(1, 2, 3)) > 0
        np.testing.assert_array_equal(has_pixels, image_rows > 0)  # row b's image in slot b, zeros otherwise
        assert (batch["labels"][batch["input_ids"] == chat.image_token_id] == IGNORE).all()
        assert (batch["labels"] != IGNORE).any(axis=1).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pipeline_started_at_batch_k_continues_exactly_with_any_workers(dataset, workers):
    """What a resume relies on (it saves no iterator state): the stream from batch k, read with `workers` worker
    processes, is the uninterrupted in-process stream's tail."""
    samples, chat, images, _ = dataset
    steps = 2 * steps_per_epoch(samples, config())
    reference = batches(iter(build_pipeline(samples, chat, images, config())), steps)
    k = 13  # mid second epoch (10 steps per epoch)
    resumed = iter(build_pipeline(samples, chat, images, config(workers=workers), start=k))
    got = batches(resumed, steps - k)
    assert len(got) == steps - k and next(resumed, None) is None
    for expected, ours in zip(reference[k:], got, strict=True):
        assert expected.keys() == ours.keys()
        for key in expected:
            np.testing.assert_array_equal(expected[key], ours[key])


def test_two_hosts_see_disjoint_shards_covering_each_epoch(dataset):
    samples, chat, images, _ = dataset
    per_epoch = steps_per_epoch(samples, config())
    seen = []
    for host in (0, 1):
        it = iter(build_pipeline(samples, chat, images, config(), process_index=host, process_count=2))
        host_batches = batches(it, 2 * per_epoch)
        assert all(b["input_ids"].shape[0] == 4 for b in host_batches)
        seen.append([b["sample_index"] for b in host_batches])
    for epoch in range(2):
        window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        host0 = np.concatenate(seen[0][window])
        host1 = np.concatenate(seen[1][window])
        assert not set(host0) & set(host1)
        assert sorted(np.concatenate([host0, host1])) == list(range(len(samples)))
    # the two hosts pad each global batch to the same bucket
    shapes = [[s.shape for s in host] for host in seen]
    assert shapes[0] == shapes[1]


def test_a_bad_image_mid_epoch_is_counted_not_fatal(dataset, tmp_path):
    samples, chat, _, paths = dataset
    broken = tmp_path / "images"
    os.symlink(paths["images"], tmp_path / "real")
    for path in paths["images"].rglob("*"):
        if path.is_file():
            target = broken / path.relative_to(paths["images"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    images = [samples[i]["image"] for i in range(len(samples))]
    victim = next(p for p in images if p is not None)
    (broken / victim).write_bytes(b"not an image")
    seen_failures = 0
    for batch in batches(iter(build_pipeline(samples, chat, ImageSource(broken), config())), 20):
        failed = batch["image_failed"]
        seen_failures += int(failed.sum())
        assert (batch["labels"][failed] == IGNORE).all()
        for row in np.flatnonzero(failed):
            assert images[batch["sample_index"][row]] == victim
    assert seen_failures == 2  # once per epoch


def test_overlong_samples_are_skipped_or_truncated_by_policy(dataset, tmp_path):
    samples, chat, _, paths = dataset
    conversations = read_vlguard(paths["train"]).conversations
    limit = int(np.median(samples.lengths[:len(conversations)]))
    kept, skips = prepare(paths, ChatTokenizer(chat.tokenizer, "vicuna_v1", NUM_IMAGE_TOKENS, limit), tmp_path,
                          ("train",))
    assert skips and len(kept) + len(skips) == len(conversations)
    assert all(f"more than max_length {limit}" in s.reason for s in skips) and kept.lengths.max() <= limit
    cut, none_skipped = prepare(paths, ChatTokenizer(chat.tokenizer, "vicuna_v1", NUM_IMAGE_TOKENS, limit,
                                                     truncation="truncate"), tmp_path, ("train",))
    assert not none_skipped and len(cut) == len(conversations) and cut.lengths.max() == limit
