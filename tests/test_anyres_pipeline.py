"""The training data path of an any-resolution model (a tiny OneVision): each `<image>` expanded to its own image's
token count, lengths and skips that count it, image sizes read once from headers and cached, image arrays of fixed
shapes (so a run compiles one train step per length bucket), and `data check`'s count of those steps.

References are independent of the code under test: each image's size from PIL, its token count from
`models.anyres.image_tokens` (checked against transformers' processors in test_anyres.py), the conversations parsed
and encoded afresh, each image preprocessed by `VisionInputs.encode` (bit-identical to transformers'), and the
train-step count against the shapes of every batch the pipeline actually yields."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anyres_fixtures import onevision_config
from test_chat_next import qwen_tokenizer
from vlguard_jax.buckets import bucket
from vlguard_jax.config import Config, DataConfig
from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.check import check_dataset
from vlguard_jax.data.image_sizes import NO_IMAGE, cache_path, image_sizes, with_image_tokens
from vlguard_jax.data.images import ImageError, ImageSource
from vlguard_jax.data.pipeline import HostBatch, PipelineConfig, build_pipeline
from vlguard_jax.data.recipes import training_data
from vlguard_jax.data.sources import read_records
from vlguard_jax.data.store import Samples, SourceFile, open_stores
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models import anyres
from vlguard_jax.models.config import LlavaConfig
from vlguard_jax.train import TrainingError
from vlguard_jax.train.loop import training_samples

MAX_LENGTH = 96
BUCKETS = (64, 80, 96)
BATCH = 4
# (height, width): tall, wide, square, pooled, tiny, a thin strip and one of 13 tokens (the most here)
SIZES = [(70, 30), (30, 80), (50, 50), (84, 84), (20, 20), (10, 90), (84, 56)]
REFUSAL = "Sorry, I cannot help with that."


def tokenizer():
    return qwen_tokenizer()


def model(tok=None) -> LlavaConfig:
    image_token = (tok or tokenizer()).convert_tokens_to_ids("<image>")
    return LlavaConfig.from_hf(onevision_config(image_token).to_dict())


def chat() -> ChatTokenizer:
    return ChatTokenizer(tokenizer(), "qwen", None, MAX_LENGTH)


def picture(path: Path, size, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (*size, 3), np.uint8)).save(path)


def write_dataset(root: Path) -> dict:
    """VLGuard safety data (images of every size; `long` fits max_length with its image as one token, not with its
    13) and LLaVA helpfulness data (text-only rows, an image whose header is garbage, one cut short after its
    header)."""
    safety = []
    for i in range(12):
        size = SIZES[i % len(SIZES)]
        record = {"id": f"s{i}", "image": f"vlguard/{i}.png", "safe": i % 2 == 0}
        if record["safe"]:
            record["instr-resp"] = [{"safe_instruction": "What color is the shape?", "response": "The shape is red."},
                                    {"unsafe_instruction": "How many shapes are there?", "response": REFUSAL}]
        else:
            record |= {"harmful_category": "privacy", "harmful_subcategory": "personal data",
                       "instr-resp": [{"instruction": "What color is the shape?", "response": REFUSAL}]}
        safety.append(record)
        picture(root / "images" / record["image"], size, i)
    safety.append({"id": "long", "image": "vlguard/long.png", "safe": True, "instr-resp": [
        {"safe_instruction": "What color is the shape?", "response": "The shape is red. " * 3},
        {"unsafe_instruction": "How many shapes are there?", "response": REFUSAL}]})
    picture(root / "images/vlguard/long.png", (84, 56), 99)
    helpful = [{"id": f"h{i}", "conversations": [{"from": "human", "value": "Describe a shape."},
                                                 {"from": "gpt", "value": "It is a red circle."}]} for i in range(2)]
    for name, size in (("h2", (50, 50)), ("h3", (30, 80)), ("corrupt", (20, 20)), ("truncated", (70, 30))):
        helpful.append({"id": name, "image": f"llava/{name}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "Red."}]})
        picture(root / "images/llava" / f"{name}.png", size, len(helpful))
    (root / "images/llava/corrupt.png").write_bytes(b"\x89PNG broken")
    cut = root / "images/llava/truncated.png"
    cut.write_bytes(cut.read_bytes()[:200])  # its header reads, its pixels do not
    paths = {"safety": root / "safety.json", "helpful": root / "helpful.json", "images": root / "images"}
    paths["safety"].write_text(json.dumps(safety))
    paths["helpful"].write_text(json.dumps(helpful))
    return paths


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("anyres"))


def data_config(paths, **kw) -> DataConfig:
    return DataConfig(**{"safety": str(paths["safety"]), "safety_images": str(paths["images"]),
                         "helpful": str(paths["helpful"]), "helpful_images": str(paths["images"]), "num_helpful": 6,
                         "template": "qwen", "max_length": MAX_LENGTH, "buckets": BUCKETS, **kw})


@pytest.fixture(scope="module")
def run_data(paths, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return training_data(data_config(paths), workdir, chat(), vision=VisionInputs.of(model())), workdir


def conversations(paths) -> dict:
    return {c.id: c for name, format in (("safety", "vlguard"), ("helpful", "llava"))
            for c in read_records(format, paths[name]).conversations}


def pil_size(paths, relpath: str) -> tuple[int, int]:
    with Image.open(paths["images"] / relpath) as image:
        return image.height, image.width


def expected_tokens(paths, conversation, config: LlavaConfig):
    """The conversation encoded afresh, its `<image>` expanded to the count of its image's PIL size."""
    count = 0 if conversation.image is None else anyres.image_tokens(config, pil_size(paths, conversation.image))
    return chat().expand(chat().encode(conversation, expand_image=False), image_tokens=count)


def pipeline_config(vision, **kw) -> PipelineConfig:
    return PipelineConfig(**{"global_batch_size": BATCH, "buckets": BUCKETS, "num_epochs": 2, "seed": 3,
                             "vision": vision, **kw})


def every_batch(samples, images, vision, **kw) -> list[dict]:
    return list(build_pipeline(samples, chat(), images, pipeline_config(vision, **kw)))


def test_rows_expand_each_image_by_its_own_count_and_carry_its_encoding(paths, run_data):
    data, _ = run_data
    config, vision = model(), VisionInputs.of(model())
    by_id = conversations(paths)
    batches = every_batch(data.samples, data.images, vision)
    assert len(batches) == 2 * len(data.samples) // BATCH
    widths, crops, tokens = set(), anyres.max_crops(config), anyres.max_image_tokens(config)
    for batch in batches:
        ids = [data.samples[i]["id"] for i in batch["sample_index"]]
        expected = [expected_tokens(paths, by_id[i], config) for i in ids]
        width = bucket(max(len(e.input_ids) for e in expected), BUCKETS)
        widths.add(width)
        assert batch["input_ids"].shape == (BATCH, width)
        assert batch["pixel_values"].shape == (BATCH, crops, 3, 28, 28)
        assert batch["image_index"].shape == batch["image_weight"].shape == (BATCH, tokens, anyres.taps(config))
        for row, (sample_id, encoded) in enumerate(zip(ids, expected)):
            n = len(encoded.input_ids)
            np.testing.assert_array_equal(batch["input_ids"][row, :n], encoded.input_ids)
            assert batch["attention_mask"][row].sum() == n
            image = by_id[sample_id].image
            if sample_id == "truncated":  # its header read, its pixels do not: a failed row, as any model's
                assert batch["image_failed"][row] and "truncated.png" in batch["image_error"][row]
                assert (batch["labels"][row] == IGNORE).all() and not batch["pixel_values"][row].any()
                continue
            assert not batch["image_failed"][row]
            np.testing.assert_array_equal(batch["labels"][row, :n], encoded.labels)
            if image is None:
                assert not batch["pixel_values"][row].any() and not batch["image_weight"][row].any()
                continue
            with Image.open(paths["images"] / image) as pil:
                want = vision.encode(pil.convert("RGB"))
            count = len(want.index)
            assert count == anyres.image_tokens(config, pil_size(paths, image))
            np.testing.assert_array_equal(batch["pixel_values"][row, :len(want.pixels)], want.pixels)
            assert not batch["pixel_values"][row, len(want.pixels):].any()
            np.testing.assert_array_equal(batch["image_index"][row, :count], want.index)
            np.testing.assert_array_equal(batch["image_weight"][row, :count], want.weight)
            assert not batch["image_weight"][row, count:].any()
    assert len(widths) > 1  # the run's batches fall in several buckets


def test_batch_shapes_follow_the_length_bucket_alone(run_data):
    """One shape signature per bucket (one compiled train step each), the image arrays the same in all."""
    data, _ = run_data
    signatures = {}
    for batch in every_batch(data.samples, data.images, VisionInputs.of(model()), num_epochs=3):
        signature = {k: (v.shape, v.dtype) for k, v in batch.items() if k != "image_error"}
        signatures.setdefault(batch["input_ids"].shape[1], set()).add(tuple(sorted(signature.items())))
    assert len(signatures) > 1 and all(len(s) == 1 for s in signatures.values())
    image_arrays = {tuple((k, v) for k, v in next(iter(s)) if k in ("pixel_values", "image_index", "image_weight"))
                    for s in signatures.values()}
    assert len(image_arrays) == 1


def test_lengths_count_each_images_tokens_and_overlong_or_unreadable_samples_are_skipped(paths, run_data):
    data, workdir = run_data
    config = model()
    by_id = conversations(paths)
    ids = [data.samples[i]["id"] for i in range(len(data.samples))]
    assert "long" not in ids and "corrupt" not in ids and {"truncated", "h0", "s0"} <= set(ids)
    for i, sample_id in enumerate(ids):
        assert data.samples.lengths[i] == len(expected_tokens(paths, by_id[sample_id], config).input_ids)
    reasons = {s.id: s.reason for s in data.sample_skips}
    assert set(reasons) == {"long", "corrupt"}
    stored = len(chat().encode(by_id["long"], expand_image=False).input_ids)
    count = anyres.image_tokens(config, (84, 56))
    assert stored <= MAX_LENGTH < stored + count - 1
    assert reasons["long"] == (f"{stored + count - 1} tokens with its image's {count} (vlguard/long.png, 56x84); more "
                               f"than max_length {MAX_LENGTH}")
    assert "llava/corrupt.png" in reasons["corrupt"] and "corrupt or truncated image" in reasons["corrupt"]
    # counted with the run's other skips: 2 of 19 pass a limit of 1/9 and stop a run allowed 1/10
    run = Config(data=data_config(paths, max_skip_fraction=1 / 9))
    assert len(training_samples(run, data, workdir, primary=True)) == len(data.samples) == 17
    assert {s["id"] for s in json.loads((workdir / "skips.json").read_text())} == {"long", "corrupt"}
    with pytest.raises(TrainingError, match="2 of 19 samples"):
        training_samples(dataclasses.replace(run, data=data_config(paths, max_skip_fraction=0.1)), data, workdir,
                         primary=False)


def test_fixed_resolution_lengths_are_unchanged(paths, tmp_path):
    """A LLaVA-1.5-style count (one per image) leaves the store's lengths as they were: nothing reads a size."""
    fixed = ChatTokenizer(tokenizer(), "qwen", 5, MAX_LENGTH)
    data = training_data(data_config(paths), tmp_path, fixed)
    assert data.samples.image_tokens is None and {s.id for s in data.sample_skips} == set()
    assert not list(tmp_path.glob("cache/*/image-sizes-*.npy"))
    by_id = conversations(paths)
    for i in range(len(data.samples)):
        conversation = by_id[data.samples[i]["id"]]
        assert data.samples.lengths[i] == len(fixed.encode(conversation).input_ids)


def test_image_sizes_are_read_once_cached_per_root_and_tried_again_only_when_unreadable(paths, tmp_path,
                                                                                       monkeypatch):
    vision = VisionInputs.of(model())
    files = {"helpful": SourceFile.of("llava", paths["helpful"])}
    store = open_stores(files, chat(), tmp_path / "cache")["helpful"]
    root = ImageSource(paths["images"])
    read = []
    size = ImageSource.size
    monkeypatch.setattr(ImageSource, "size", lambda self, relpath: read.append(relpath) or size(self, relpath))
    rows = np.arange(len(store))
    sizes, failures = image_sizes(store, root, rows)
    by_row = {row: store.row(row)["image"] for row in rows}
    for row, image in by_row.items():
        if image is None:
            assert tuple(sizes[row]) == (NO_IMAGE, NO_IMAGE)
        elif image != "llava/corrupt.png":
            assert tuple(sizes[row]) == pil_size(paths, image)
    assert [by_row[rows[k]] for k in failures] == ["llava/corrupt.png"]
    assert sorted(read) == sorted(image for image in by_row.values() if image is not None)
    cached = np.load(cache_path(store, root))
    assert cached.shape == (len(store), 2) and cached.dtype == np.int32
    # again: from the cache, only the unreadable image is read (a repaired file would then be seen)
    read.clear()
    again, _ = image_sizes(store, root, rows)
    np.testing.assert_array_equal(again, sizes)
    assert read == ["llava/corrupt.png"]
    # another root of the same images reads (and keeps) its own
    other = ImageSource(shutil.copytree(paths["images"], tmp_path / "copy"))
    assert cache_path(store, other) != cache_path(store, root)
    read.clear()
    np.testing.assert_array_equal(image_sizes(store, other, rows)[0], sizes)
    assert sorted(read) == sorted(image for image in by_row.values() if image is not None)
    # a run's second start reads none of the images its first read
    workdir = tmp_path / "run"
    training_data(data_config(paths), workdir, chat(), vision=vision)
    read.clear()
    training_data(data_config(paths), workdir, chat(), vision=vision)
    assert read == ["llava/corrupt.png"]


@pytest.mark.parametrize("archive", [False, True])
def test_image_size_reads_the_header_and_refuses_what_load_refuses(paths, tmp_path, archive):
    root = paths["images"]
    if archive:
        root = Path(shutil.make_archive(str(tmp_path / "images"), "zip", paths["images"]))
    source = ImageSource(root)
    for image in ("vlguard/0.png", "vlguard/long.png", "llava/h3.png"):
        assert source.size(image) == pil_size(paths, image)
    assert source.size("llava/truncated.png") == (70, 30)  # its pixels fail only when decoded, as a batch row
    with pytest.raises(ImageError, match="truncated"):
        source.load("llava/truncated.png")
    small = ImageSource(root, max_pixels=1000)
    for reader, relpath in ((source, "llava/corrupt.png"), (source, "llava/absent.png"), (source, "../x.png"),
                            (small, "vlguard/0.png")):
        with pytest.raises(ImageError) as by_size:
            reader.size(relpath)
        with pytest.raises(ImageError) as by_load:
            reader.load(relpath)
        same = lambda error: re.sub(r"<[^>]*>", "<stream>", str(error.value))  # PIL names the file object it read
        assert same(by_size) == same(by_load) and relpath in str(by_size.value)


PAIRS = [{"id": f"p{i}", "image": f"vlguard/{i}.png", "prompt": "What color is the shape?",
          "chosen": "The shape is red.", "rejected": "It is blue. " * (1 + i % 3 if i < 6 else 7)} for i in range(7)]
# p6: its rejected answer fits max_length with its image as one token, not with its 13


@pytest.fixture(scope="module")
def pair_data(paths, tmp_path_factory):
    """Preference pairs, each with an image of another size, and the batch of the first four."""
    workdir = tmp_path_factory.mktemp("pairs")
    (workdir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    config = DataConfig(mixture="preference", preference=str(workdir / "pairs.jsonl"),
                        preference_images=str(paths["images"]), template="qwen", max_length=MAX_LENGTH,
                        buckets=BUCKETS)
    vision = VisionInputs.of(model())
    data = training_data(config, workdir, chat(), vision=vision)
    batch = HostBatch(data.samples, chat(), data.images, pipeline_config(vision), 0, 1, data.rejected)(np.arange(4))
    return data, batch


def test_preference_pairs_expand_both_answers_by_their_images_count(paths, pair_data):
    data, batch = pair_data
    stored = len(data.rejected.stores[0].row(6)["encoded"].input_ids)
    count = anyres.image_tokens(model(), pil_size(paths, PAIRS[6]["image"]))
    assert [(s.id, s.reason) for s in data.sample_skips] == [("p6", (
        f"{stored + count - 1} tokens with its image's {count} (vlguard/6.png, 56x84); more than max_length "
        f"{MAX_LENGTH}"))]
    assert [data.samples[i]["id"] for i in range(6)] == [data.rejected[i]["id"] for i in range(6)] == [
        p["id"] for p in PAIRS[:6]] and len(data.samples) == len(data.rejected) == 6
    assert batch["input_ids"].shape[:2] == (4, 2) and batch["pixel_values"].shape[0] == 4
    for row in range(4):
        count = anyres.image_tokens(model(), pil_size(paths, PAIRS[row]["image"]))
        assert (batch["input_ids"][row] == chat().image_token_id).sum(axis=1).tolist() == [count, count]
        assert np.count_nonzero(batch["image_weight"][row].any(axis=1)) == count
    assert data.samples.lengths.tolist() == [
        max(len(data.samples[i]["encoded"].input_ids), len(data.rejected[i]["encoded"].input_ids))
        + data.samples.image_tokens[i] - 1 for i in range(6)]


def test_data_check_counts_the_train_step_shapes_the_pipeline_yields(paths, tmp_path):
    """For a run on the check's samples alone, its count is exact: the distinct widths of every batch."""
    config, vision = model(), VisionInputs.of(model())
    report = check_dataset("vlguard", paths["safety"], images=paths["images"], tokenizer=tokenizer(),
                           template="qwen", max_length=MAX_LENGTH, model=config, buckets=BUCKETS,
                           global_batch_size=2, epochs=3, seed=3)
    store = open_stores({"safety": SourceFile.of("vlguard", paths["safety"])}, chat(), tmp_path)["safety"]
    samples, _, _ = with_image_tokens(Samples.select([(store, store.ids)])[0], [ImageSource(paths["images"])],
                                      vision, MAX_LENGTH)
    widths = {b["input_ids"].shape[1] for b in every_batch(samples, ImageSource(paths["images"]), vision,
                                                            global_batch_size=2, num_epochs=3)}
    shapes = report["train_step_shapes"]
    assert shapes["count"] == len(widths) and shapes["lengths"] == sorted(widths)
    assert 1 < shapes["count"] <= shapes["upper_bound"] <= len(BUCKETS)
    assert shapes["samples"] == len(samples) == 12 and shapes["global_batches"] == 3 * 12 // 2
    assert report["over_max_length"]["count"] == 1
    assert report["token_length"]["max"] == len(expected_tokens(paths, conversations(paths)["long"], config).input_ids)


@pytest.fixture(scope="module")
def onevision_pair(tmp_path_factory):
    """The tiny OneVision in transformers (its vocabulary the Qwen tokenizer's) and loaded as ours."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    import vlguard_jax
    from hf_fixtures import scale_weights

    tok = tokenizer()
    config = onevision_config(tok.convert_tokens_to_ids("<image>"))
    config.text_config.vocab_size = len(tok)
    torch.manual_seed(0)
    hf = scale_weights(LlavaOnevisionForConditionalGeneration(config).eval())
    path = tmp_path_factory.mktemp("onevision")
    hf.save_pretrained(path)
    return hf, vlguard_jax.load_pretrained(path)


def test_a_train_step_on_pipeline_batches_has_transformers_loss(paths, run_data, onevision_pair):
    """The SFT step reads an any-resolution batch's images (`images_of`): its loss is transformers' on the same
    rows, their images through transformers' own processor."""
    import jax
    import torch
    from flax import nnx

    from test_anyres_parity import hf_processor
    from vlguard_jax.train.optimizer import OptimizerConfig, build_optimizer
    from vlguard_jax.train.step import init_state, make_train_step
    from vlguard_jax.train.trainable import split_model

    hf, ours = onevision_pair
    data, _ = run_data
    ids = [data.samples[i]["id"] for i in range(len(data.samples))]
    rows = [ids.index(i) for i in ("s0", "h0", "s5", "h3")]  # images of three sizes and a text-only row
    batch = HostBatch(data.samples, chat(), data.images, pipeline_config(VisionInputs.of(ours.config)), 0, 1)(
        np.array(rows))
    pictures = [Image.open(paths["images"] / data.samples[i]["image"]).convert("RGB") for i in rows
                if data.samples[i]["image"] is not None]
    processed = hf_processor(hf)(pictures, return_tensors="pt")
    with torch.no_grad():
        reference = hf(input_ids=torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"]),
                       labels=torch.tensor(batch["labels"]).long(), **processed).loss.item()
    graphdef, trainable, frozen = split_model(ours, "projector")
    params = nnx.to_pure_dict(trainable)
    tx = build_optimizer(OptimizerConfig(learning_rate=1e-3), params, total_steps=2)
    step = jax.jit(make_train_step(graphdef, trainable, tx, dropout=False))
    keys = ("input_ids", "labels", "attention_mask", "pixel_values", "image_index", "image_weight")
    _, metrics = step(init_state(params, tx, seed=0), frozen, {k: batch[k] for k in keys})
    assert reference > 1.0 and abs(float(metrics["loss"]) - reference) < 1e-5


def test_preference_log_probabilities_of_pairs_are_transformers(paths, pair_data, onevision_pair):
    """The preference step reads a pair's one image for both answers (`images_of`): each side's log-probability
    is transformers' on that row with the image."""
    import torch

    from test_anyres_parity import hf_processor
    from vlguard_jax.train.preference import sequence_logps

    hf, ours = onevision_pair
    _, batch = pair_data
    pictures = [Image.open(paths["images"] / p["image"]).convert("RGB") for p in PAIRS[:4] for _ in "cr"]
    rows = lambda x: torch.tensor(x.reshape(8, -1))
    with torch.no_grad():
        logits = hf(input_ids=rows(batch["input_ids"]), attention_mask=rows(batch["attention_mask"]),
                    **hf_processor(hf)(pictures, return_tensors="pt")).logits
    labels = rows(batch["labels"]).long()[:, 1:]
    picked = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    reference = (picked * (labels != IGNORE)).sum(-1).reshape(4, 2).numpy()
    keys = ("input_ids", "labels", "attention_mask", "pixel_values", "image_index", "image_weight")
    logps, _ = sequence_logps(ours, {k: batch[k] for k in keys}, None, 0, mean=False)
    assert np.abs(reference).min() > 1.0
    np.testing.assert_allclose(np.asarray(logps), reference, rtol=1e-6, atol=0)
