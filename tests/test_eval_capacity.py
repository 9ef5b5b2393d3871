"""`eval --batch-size auto`: the slot arithmetic with numbers, the engine's programs' memory measured on a tiny
model (CPU programs report it too), and the eval sizing itself where devices are made to report a limit."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from eval_fixtures import random_checkpoint
from vlguard_jax.cli import build_parser, main
from vlguard_jax.config import ConfigError
from vlguard_jax.evaluate import runner
from vlguard_jax.evaluate.protocols import PROTOCOLS
from vlguard_jax.generate import capacity
from vlguard_jax.generate.capacity import Footprint, fit, slots_that_fit
from vlguard_jax.generate.engine import Geometry
from vlguard_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.parallel import make_mesh

GB = 1e9


def test_fit_splits_program_bytes_into_fixed_state_and_rows():
    # 10 GB fixed, 1 GB of state per slot, 0.5 GB per row computed: measured at 8 and 16 slots
    measured = fit((8, 16), (10 * GB + 8 * 1.5 * GB, 10 * GB + 16 * 1.5 * GB), per_slot=1 * GB)
    assert measured == pytest.approx(Footprint(10 * GB, 1 * GB, 0.5 * GB))
    assert measured.at(10, 16) == pytest.approx(10 * GB + 10 * GB + 8 * GB)


def test_slots_round_to_the_mesh_and_the_insert_rows_to_powers_of_two():
    decode, insert = Footprint(10 * GB, 1 * GB, 0.1 * GB), Footprint(10 * GB, 1 * GB, 0.5 * GB)
    # budget 72 GB: decode fits up to 56 slots (10 + 1.1 n); an insert of 40 or 48 slots computes 64 rows
    # (10 + 40 + 32 = 82 GB), of 32 slots 32 rows (58 GB): the insert binds
    assert slots_that_fit(decode, insert, 80 * GB, shards=8) == 32
    assert slots_that_fit(decode, insert, 80 * GB, shards=8, fraction=1.0) == 32  # 80 GB: 48 → 10+48+32 = 90
    # rows as slots (shards 1 up to the next power of two), so the decode step binds: 10 + 1.1 n <= 72 → 56
    rows_free = Footprint(10 * GB, 1 * GB, 0.0)
    assert slots_that_fit(decode, rows_free, 80 * GB, shards=1) == 56
    assert slots_that_fit(decode, rows_free, 80 * GB, shards=6) == 54  # a multiple of data × fsdp
    assert slots_that_fit(decode, rows_free, 8000 * GB, shards=8) == 256  # the cap
    assert slots_that_fit(decode, rows_free, 8000 * GB, shards=512) == 512  # at least one per device
    assert slots_that_fit(decode, insert, 15 * GB, shards=8) == 0  # 8 slots need 18.8 GB


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_memory_limit_is_the_smallest_reported_and_none_on_cpu():
    assert capacity.memory_limit(jax.devices()) is None  # CPU devices report no memory
    limits = [FakeDevice({"bytes_limit": 80 * 2**30, "bytes_in_use": 0}), FakeDevice({"bytes_limit": 70 * 2**30})]
    assert capacity.memory_limit(limits) == 70 * 2**30
    assert capacity.memory_limit([*limits, FakeDevice(None)]) is None


def test_geometry_is_the_engines_for_the_longest_prefix_and_suffix():
    image = 9
    prompts = [np.array([1, 2] + [image] * 70 + [3] * 5), np.array([1, 2, 3] * 30), np.array([1, image, 4])]
    # prefixes through the last image token: 72 → bucket 128; suffixes 5, 90 (text only), 1 → 128
    assert capacity.geometry(prompts, image, 256) == Geometry(prefix=128, suffix=128, new=256, stops=1)
    assert capacity.geometry(prompts[1:2], None, 16) == Geometry(prefix=0, suffix=128, new=16, stops=1)


def tiny_model():
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=32,
                          patch_size=8)
    text = TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=1024)
    return nnx.eval_shape(lambda: LlavaForConditionalGeneration(LlavaConfig(vision=vision, text=text,
                                                                            image_token_id=500), rngs=nnx.Rngs(0)))


def test_measured_bytes_per_slot_grow_with_the_cache_length():
    model = tiny_model()  # abstract: its programs are compiled, never run
    short, long = Geometry(64, 64, 64, 1), Geometry(128, 64, 512, 1)
    growth = {}
    for name, geom in (("short", short), ("long", long)):
        two, four = capacity.measure(model, geom, 2), capacity.measure(model, geom, 4)
        growth[name] = {p: (four[p] - two[p]) / 2 for p in two}
        # each slot holds its cache rows (2 layers × k, v × 2 heads × length × 16 × 4 bytes) at least
        cache = 2 * 2 * 2 * (geom.prompt + geom.new) * 16 * 4
        assert capacity.slot_bytes(model, geom, None) >= cache
        assert min(growth[name].values()) >= cache
    assert growth["long"]["decode"] > growth["short"]["decode"] + 2 * 2 * 2 * 448 * 16 * 4 * 0.99
    assert growth["long"]["insert"] > growth["short"]["insert"]


def test_estimate_on_a_mesh_is_a_multiple_of_data_fsdp_that_fits():
    model, mesh, geom = tiny_model(), make_mesh(data=2, fsdp=4), Geometry(64, 64, 64, 1)
    sized = capacity.estimate(model, geom, mesh, limit=2**30)
    assert sized.slots == capacity.MAX_SLOTS and sized.reason.startswith("auto: per device")
    # a limit that holds 8 slots' decode step and insert, and not 16's
    eight = max(sized.decode.at(8, 8), sized.insert.at(8, 8))
    assert max(sized.decode.at(16, 16), sized.insert.at(16, 16)) > eight
    tight = capacity.estimate(model, geom, mesh, limit=int(eight / capacity.FRACTION) + 1)
    assert tight.slots == 8
    with pytest.raises(ConfigError, match="not even 8 slots"):
        capacity.estimate(model, geom, mesh, limit=int(sized.decode.fixed))


def test_cpu_keeps_the_default_and_a_model_judge_is_not_crowded(monkeypatch):
    mesh = runner.eval_mesh(None, None)  # on CPU: as for 8 slots
    assert dict(mesh.shape) == dict(runner.eval_mesh(None, 8).shape)
    sized = runner.auto_batch_size(None, None, [], PROTOCOLS["vlguard"], mesh)
    assert sized.slots == capacity.DEFAULT_SLOTS and "no memory limit" in sized.reason
    monkeypatch.setattr(capacity, "memory_limit", lambda devices: 80 * 2**30)
    mesh = runner.eval_mesh(None, None)  # devices that report memory: fsdp over all of them
    assert (mesh.shape["data"], mesh.shape["fsdp"]) == (1, jax.device_count())
    sized = runner.auto_batch_size(None, None, [], PROTOCOLS["vlguard"], make_mesh(fsdp=4, tensor=2),
                                   ["keywords", "llama_guard"])
    assert sized.slots == 8 and "llama_guard" in sized.reason


def test_batch_size_flag():
    parse = lambda *flag: build_parser().parse_args(["eval", "--benchmark", "vlguard", "--data", "x", *flag])
    assert parse().batch_size is None and parse("--batch-size", "auto").batch_size is None
    assert parse("--batch-size", "4").batch_size == 4
    with pytest.raises(SystemExit):
        parse("--batch-size", "0")


def test_eval_sizes_its_slots_where_devices_report_memory(tmp_path, monkeypatch, capsys):
    root, paths = random_checkpoint(tmp_path, num_test_images=3)
    monkeypatch.setattr(capacity, "memory_limit", lambda devices: 2**30)  # as a GPU or TPU reports its memory
    assert main(["eval", "--model", str(root / "model"), "--benchmark", "vlguard", "--data", str(paths["test"]),
                 "--images", str(paths["images"]), "--out", str(tmp_path / "out"), "--max-new-tokens", "2",
                 "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    slots = int(re.search(r"^slots: (\d+) \(auto: per device .* within 90% of 1\.00 GiB\)$", printed, re.M)[1])
    assert slots == capacity.MAX_SLOTS  # a tiny model: the cap
    assert (tmp_path / "out" / "vlguard_unsafes" / "responses.jsonl").exists()
