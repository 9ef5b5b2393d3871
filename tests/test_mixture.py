"""Post-hoc and mixed mixtures, nested safety-data sub-samples, and exact replay from a manifest."""

import json

import pytest

from vlguard_jax.data.mixture import mixed, posthoc, replay, sample
from vlguard_jax.data.sources import DataError


def pool(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def test_posthoc_mix_is_deterministic_and_replayable(tmp_path):
    safety, helpful = pool("s", 50), pool("h", 300)
    mix = posthoc(safety, helpful, num_helpful=40, seed=3)
    assert len(mix.ids) == 90
    assert mix.manifest["parts"]["safety"] == safety
    assert len(set(mix.manifest["parts"]["helpful"])) == 40
    assert posthoc(safety, helpful, num_helpful=40, seed=3).manifest == mix.manifest
    assert posthoc(safety, helpful, num_helpful=40, seed=4).manifest != mix.manifest
    mix.write_manifest(tmp_path / "mix.json")
    again = replay(json.loads((tmp_path / "mix.json").read_text()), {"safety": safety, "helpful": helpful})
    assert again.ids == mix.ids
    with pytest.raises(DataError, match="ids of part 'helpful' are not in its pool"):
        replay(mix.manifest, {"safety": safety, "helpful": helpful[:10]})


def test_safety_subsamples_are_nested_across_sizes():
    safety = pool("s", 200)
    sizes = [sample(safety, count=n, seed=0) for n in (10, 50, 100, 200)]
    for small, large in zip(sizes, sizes[1:]):
        assert set(small) < set(large)
    assert len(sample(safety, fraction=0.25, seed=0)) == 50
    with pytest.raises(DataError, match="cannot draw 201 samples from a pool of 200"):
        sample(safety, count=201)


def test_mixed_appends_safety_to_the_whole_instruction_set():
    mix = mixed(pool("s", 20), pool("i", 500), safety_fraction=0.5, seed=1)
    assert len(mix.ids) == 510 and mix.manifest["kind"] == "mixed"
    with pytest.raises(DataError, match="repeated ids"):
        mixed(pool("s", 5), pool("s", 5))
