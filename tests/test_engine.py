"""The continuous engine's greedy tokens equal the static engine's: with more prompts than slots (each slot reused),
with image prefixes shared or not, with several LoRA adapters in one pass, on one device and on a
data × fsdp × tensor mesh. The static engine is itself held to transformers' `generate` (test_generate)."""

import numpy as np
import pytest
from flax import nnx

import vlguard_jax
from eval_fixtures import random_adapters
from hf_fixtures import IMAGE_TOKEN, build_hf, save_layout
from vlguard_jax.generate import Engine, Generator, Request, SamplingConfig
from vlguard_jax.parallel import make_mesh

SAMPLING = SamplingConfig(max_new_tokens=14)
BUCKETS = (32, 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = build_hf("gqa", seed=41)
    return save_layout(hf, tmp_path_factory.mktemp("engine"), "hf_save"), hf.config


def requests_for(config, seed: int, count: int = 13) -> list[Request]:
    """Two questions on one image (adjacent, one key), lone images and text-only prompts; varied prompt lengths
    and token limits."""
    rng = np.random.RandomState(seed)
    v = config.vision_config
    per_image = (v.image_size // v.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")
    system = rng.randint(3, IMAGE_TOKEN, 4)
    requests, group = [], 0
    while len(requests) < count:
        kind = group % 3  # 0: a pair on one image, 1: a lone image, 2: text only
        image = rng.randn(3, v.image_size, v.image_size).astype(np.float32)
        for _ in range(2 if kind == 0 else 1):
            question = rng.randint(3, IMAGE_TOKEN, rng.randint(2, 12))
            limit = int(rng.randint(2, SAMPLING.max_new_tokens + 1))
            if kind == 2:
                requests.append(Request(np.concatenate([[1], system, question]).astype(np.int32),
                                        max_new_tokens=limit))
            else:
                prompt = np.concatenate([[1], system, [IMAGE_TOKEN] * per_image, question]).astype(np.int32)
                requests.append(Request(prompt, image, f"image{group}", max_new_tokens=limit))
        group += 1
    return requests[:count]


def static_tokens(model, requests, stop_ids, mesh=None, batch: int = 4) -> list[np.ndarray]:
    generator = Generator(model, pad_id=0, stop_ids=stop_ids, batch_size=batch, buckets=BUCKETS, mesh=mesh)
    out = []
    for start in range(0, len(requests), batch):
        chunk = requests[start: start + batch]
        out += generator.generate([r.prompt for r in chunk], [r.image for r in chunk], SAMPLING,
                                  [r.max_new_tokens for r in chunk])
    return out


def until_stop(tokens: np.ndarray, stops) -> np.ndarray:
    hits = np.flatnonzero(np.isin(tokens, stops))
    return tokens[: hits[0] + 1] if len(hits) else tokens


def assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for row, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(a, b, err_msg=f"request {row}")


def with_stops(model, requests):
    """A stop id the model does emit, and every third request with a stop of its own instead: the expected
    tokens come from an unstopped static run cut at each row's stops."""
    free = static_tokens(model, requests, [-1])
    values, counts = np.unique(np.concatenate(free), return_counts=True)
    stop = int(values[np.argmax(counts)])
    own = {i: (int(free[i][len(free[i]) // 2]),) for i in range(0, len(requests), 3)}
    requests = [Request(r.prompt, r.image, r.image_key, r.max_new_tokens, own.get(i)) for i, r in enumerate(requests)]
    expected = [until_stop(t, own.get(i, (stop,))) for i, t in enumerate(free)]
    return requests, stop, expected


def per_adapter_static(model, states, requests, stop, mesh=None) -> list[np.ndarray]:
    expected = []
    for state in states:
        nnx.update(model, state)
        expected += static_tokens(model, requests, [stop], mesh)
    return expected


def test_slots_are_refilled_and_tokens_equal_the_static_engine(checkpoint):
    path, config = checkpoint
    model = vlguard_jax.load_pretrained(path)
    requests, stop, expected = with_stops(model, requests_for(config, 0))
    engine = Engine(model, pad_id=0, stop_ids=[stop], slots=4, buckets=BUCKETS)
    ours = engine.generate(requests, SAMPLING)
    assert_same(ours, expected)
    assert any(len(t) < r.max_new_tokens for t, r in zip(ours, requests))  # stops did end rows early
    assert any(len(t) == r.max_new_tokens > 2 for t, r in zip(ours, requests))  # and limits others
    assert engine.stats["rows_inserted"] == 13 and engine.stats["inserts"] >= 4  # 4 slots served 13 rows
    compiled = engine.compilations
    assert_same(engine.generate(requests, SAMPLING), expected)
    assert engine.compilations == compiled  # the same run shapes reuse every executable


def test_shared_image_prefixes_give_the_unshared_tokens(checkpoint):
    path, config = checkpoint
    model = vlguard_jax.load_pretrained(path)
    requests = requests_for(config, 1)
    shared = Engine(model, pad_id=0, stop_ids=[2], slots=4, buckets=BUCKETS)
    unshared = Engine(model, pad_id=0, stop_ids=[2], slots=4, buckets=BUCKETS, share_prefixes=False)
    assert_same(shared.generate(requests, SAMPLING), unshared.generate(requests, SAMPLING))
    pairs = sum(a.image_key is not None and a.image_key == b.image_key for a, b in zip(requests, requests[1:]))
    assert pairs >= 3
    assert shared.stats["prefixes_prefilled"] <= unshared.stats["prefixes_prefilled"] - pairs + 1
    assert unshared.stats["prefixes_prefilled"] == 13


def test_adapters_in_one_pass_equal_each_adapter_alone(checkpoint):
    path, config = checkpoint
    model = vlguard_jax.load_pretrained(path)
    states = random_adapters(model, 3)
    requests = requests_for(config, 2, count=7)
    expected = per_adapter_static(model, states, requests, stop=2)
    batched = [Request(r.prompt, r.image, r.image_key, r.max_new_tokens, adapter=k) for k in range(3) for r in requests]
    engine = Engine(model, pad_id=0, stop_ids=[2], slots=6, buckets=BUCKETS, adapters=states)
    assert_same(engine.generate(batched, SAMPLING), expected)
    assert len({tuple(t) for t in expected[:7]} ^ {tuple(t) for t in expected[7:14]}) > 0  # the adapters differ
    with pytest.raises(ValueError, match="adapter 3 is not one of the engine's 3"):
        engine.generate([Request(requests[0].prompt, requests[0].image, adapter=3)])


def test_on_a_data_fsdp_tensor_mesh(checkpoint):
    """Slots over data × fsdp, weights over fsdp × tensor, the cache over slots and kv heads: all three features
    give the one-device static engine's tokens."""
    path, config = checkpoint
    one_device = vlguard_jax.load_pretrained(path)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = vlguard_jax.load_pretrained(path, mesh=mesh)
    requests, stop, expected = with_stops(one_device, requests_for(config, 3, count=11))
    for share in (True, False):
        engine = Engine(model, pad_id=0, stop_ids=[stop], slots=4, buckets=BUCKETS, mesh=mesh, share_prefixes=share)
        assert_same(engine.generate(requests, SAMPLING), expected)
    plain = requests_for(config, 4, count=5)
    reference = per_adapter_static(one_device, random_adapters(one_device, 2), plain, stop=2)
    engine = Engine(model, pad_id=0, stop_ids=[2], slots=8, buckets=BUCKETS, mesh=mesh,
                    adapters=random_adapters(model, 2, mesh))
    batched = [Request(r.prompt, r.image, r.image_key, r.max_new_tokens, adapter=k) for k in range(2) for r in plain]
    assert_same(engine.generate(batched, SAMPLING), reference)
    with pytest.raises(ValueError, match="6 slots do not split evenly between 4 adapters|data × fsdp = 4"):
        Engine(model, pad_id=0, stop_ids=[2], slots=6, mesh=mesh)
